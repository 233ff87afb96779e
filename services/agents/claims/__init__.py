"""The reference domain: insurance claims. Four agents, each its own process:

    intake        case_opened            -> step intake (accepted | rejected)
    fraud         step intake accepted   -> step fraud_screening (fraud_score)
    adjudication  step fraud_screening   -> step adjudication, action_requested issue_payment
    payment       action_approved        -> action_completed | action_failed + escalation

and a simulated payment gateway (`gateway.py`) that fails and stalls on purpose.
"""
