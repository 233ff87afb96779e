"""Trust: identities and signatures, the key directory, enrolment and onboarding, who
may state which fact, and proof of authorization before a side effect.

Internal to `mesh`: agents import `mesh`, services import `mesh` and `mesh.service`.
"""
