"""The pure parts of partitioned consumption: work subjects and their way back to the
case log, the work stream's declaration, replica preferences and names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.errors import ContractError
from contracts.subjects import Subjects, case_subject_of_work, partition_of_work
from mesh import MeshSettings
from mesh._broker.direct_get import _status as direct_status
from mesh._broker.stored_messages import original_of_work
from mesh._broker.topology import Topology
from mesh._runtime.consumer import case_ordering_key
from mesh._runtime.partitions import preferred_partitions
from mesh.errors import ConfigurationError
from services.stack.processes import parse_replicas, replica_names, role_of

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def test_a_work_subject_leads_back_to_the_case_subject_it_was_copied_from() -> None:
    assert case_subject_of_work("mesh.work.5.claim-1.case_opened") == (
        "mesh.case.claim-1.case_opened"
    )
    assert partition_of_work("mesh.work.5.claim-1.case_opened") == 5
    assert Subjects("mesh").work_of_type(3, "case_opened") == "mesh.work.3.*.case_opened"


def test_the_server_computes_the_partition_from_the_case_id_token() -> None:
    source, destination = Subjects("mesh").work_transform(8)
    assert source == "mesh.case.*.*"
    assert destination == "mesh.work.{{partition(8,1)}}.{{wildcard(1)}}.{{wildcard(2)}}"


def test_the_work_stream_sources_the_case_log_and_takes_no_publishes() -> None:
    topology = Topology("mesh", partitions=4)
    [work] = [s for s in topology.streams() if s.name == topology.work_stream]
    assert work.subjects is None
    assert work.sources is not None
    [source] = work.sources
    assert source.name == topology.cases_stream
    assert source.subject_transforms is not None
    assert source.subject_transforms[0].dest.startswith("mesh.work.{{partition(4,1)}}")
    assert topology.partition_durables("fraud") == [f"fraud_p{k}" for k in range(4)]
    with pytest.raises(ValueError, match="partitions"):
        Topology("mesh", partitions=0)


def _copy(headers: dict[str, str]) -> dict[str, str]:
    return {"Mesh-Signer": "U1", "Nats-Pin-Id": "pin", **headers}


def test_a_work_copy_is_read_as_the_case_log_message_it_carries() -> None:
    source = "MESH_CASES 42 mesh.case.*.* mesh.work.{{…}} mesh.case.c-1.case_opened x1"
    raw = original_of_work(
        "mesh.work.2.c-1.case_opened",
        b"{}",
        _copy({"Nats-Stream-Source": source}),
        NOW,
        "MESH_CASES",
    )
    assert raw.sequence == 42
    assert raw.subject == "mesh.case.c-1.case_opened"
    assert raw.headers == {"Mesh-Signer": "U1"}  # the server's own headers are not kept
    assert raw.stored_at == NOW


@pytest.mark.parametrize(
    "source",
    [
        "",  # no header at all
        "MESH_OTHER 42 mesh.case.*.* d mesh.case.c-1.case_opened x1",  # another stream
        "MESH_CASES forty-two mesh.case.*.* d mesh.case.c-1.case_opened x1",
        "MESH_CASES 42 mesh.case.*.* d mesh.case.c-2.case_opened x1",  # another case
    ],
)
def test_a_work_copy_that_does_not_say_where_it_came_from_is_refused(source: str) -> None:
    headers = _copy({"Nats-Stream-Source": source} if source else {})
    with pytest.raises(ContractError):
        original_of_work("mesh.work.2.c-1.case_opened", b"{}", headers, NOW, "MESH_CASES")


def test_replica_i_of_n_prefers_the_partitions_it_is_due() -> None:
    assert preferred_partitions(None, 8) is None
    assert preferred_partitions("0/3", 8) == frozenset({0, 3, 6})
    assert preferred_partitions("2/3", 8) == frozenset({2, 5})
    assert MeshSettings(replica="1/2").replica == "1/2"
    for wrong in ("2/2", "x/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="replica"):
            MeshSettings(replica=wrong)


def test_replicas_are_named_and_parsed_for_agents_and_services() -> None:
    assert replica_names("fraud", 1) == ["fraud"]
    assert replica_names("fraud", 3) == ["fraud-1", "fraud-2", "fraud-3"]
    assert role_of("policy-2") == "policy"
    assert role_of("nats-server-2") == "nats-server-2"
    assert parse_replicas(["claims-fraud=2", "policy=3", "registry=2"]) == {
        "fraud": 2,
        "policy": 3,
        "registry": 2,
    }
    assert role_of("registry-2") == "registry"
    for wrong in (["gateway=2"], ["fraud=0"], ["fraud"], ["nobody=2"]):
        with pytest.raises(ConfigurationError, match="--replicas"):
            parse_replicas(wrong)


class _Delivered:
    def __init__(self, subject: str) -> None:
        self.subject = subject


def test_work_copies_are_ordered_by_case_not_by_partition() -> None:
    key = case_ordering_key
    assert key(_Delivered("mesh.work.3.claim-1.case_opened")) == "claim-1"  # type: ignore[arg-type]
    assert key(_Delivered("mesh.work.3.claim-2.case_opened")) == "claim-2"  # type: ignore[arg-type]
    assert key(_Delivered("mesh.case.claim-1.case_opened")) == "claim-1"  # type: ignore[arg-type]


def test_a_status_header_on_a_stored_message_does_not_make_it_a_status() -> None:
    assert direct_status({"Nats-Sequence": "7", "Status": "404"}) is None
    assert direct_status({"Status": "404", "Description": "Message Not Found"}) == "404"
    assert direct_status({"Status": "204", "Nats-Num-Pending": "0"}) == "204"
