import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from services.common.registry import (
    CorruptVersionError,
    InvalidTransitionError,
    ModelRegistry,
    RegistryError,
    Serving,
    VersionNotFoundError,
)

REPO = Path(__file__).resolve().parents[2]


def write_weights(payload: bytes = b"weights"):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "config.json").write_text("{}")

    return write


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store")


def test_new_version_is_a_numbered_candidate_with_its_manifest(registry):
    first = registry.create_version("policy", write_weights(), metrics={"loss": 1.5})
    second = registry.create_version(
        "policy", write_weights(b"other"), parent="v0", data_snapshot_id="snap-7"
    )

    assert (first.version, second.version) == ("v0", "v1")
    assert second.status == "candidate"
    assert second.manifest.parent == "v0"
    assert second.manifest.data_snapshot_id == "snap-7"
    assert registry.get("policy", "v0").manifest.metrics == {"loss": 1.5}
    assert set(second.manifest.files) == {"model.safetensors", "config.json"}
    assert [v.version for v in registry.versions("policy")] == ["v0", "v1"]
    assert registry.versions("reward") == []


def test_parent_must_exist(registry):
    with pytest.raises(VersionNotFoundError, match="policy/v4 does not exist"):
        registry.create_version("policy", write_weights(), parent="v4")


def test_promote_then_promote_again_retires_the_previous(registry):
    for _ in range(2):
        registry.create_version("policy", write_weights())
    registry.promote("policy", "v0")
    registry.promote("policy", "v1")

    assert registry.promoted("policy").version == "v1"
    assert registry.get("policy", "v0").status == "retired"
    assert registry.resolve("policy").version == "v1"
    assert registry.resolve("policy/promoted").version == "v1"
    assert [h["action"] for h in registry.history("policy")] == ["promote", "promote"]


def test_rollback_promotes_the_parent(registry):
    registry.create_version("policy", write_weights())
    registry.create_version("policy", write_weights(b"child"), parent="v0")
    registry.promote("policy", "v0")
    registry.promote("policy", "v1")

    restored = registry.rollback("policy")

    assert restored.version == "v0"
    assert restored.status == "promoted"
    assert registry.get("policy", "v1").status == "rolled-back"
    last = registry.history("policy")[-1]
    assert (last["action"], last["version"], last["previous"]) == ("rollback", "v0", "v1")


def test_rollback_needs_something_to_roll_back_to(registry):
    with pytest.raises(InvalidTransitionError, match="nothing to roll back"):
        registry.rollback("policy")
    registry.create_version("policy", write_weights())
    registry.promote("policy", "v0")
    with pytest.raises(InvalidTransitionError, match="no parent"):
        registry.rollback("policy")
    assert registry.promoted("policy").version == "v0"


def test_rejected_version_is_not_promoted_without_force(registry):
    registry.create_version("reward", write_weights())
    registry.reject("reward", "v0", reason="accuracy 0.51 < 0.6")

    with pytest.raises(InvalidTransitionError, match="rejected"):
        registry.promote("reward", "v0")
    assert registry.promoted("reward") is None
    assert registry.history("reward")[-1]["reason"] == "accuracy 0.51 < 0.6"
    assert registry.promote("reward", "v0", force=True).status == "promoted"


def test_missing_version_and_bad_names_give_clear_errors(registry):
    registry.create_version("policy", write_weights())
    with pytest.raises(VersionNotFoundError, match=r"policy/v3 does not exist \(known: v0\)"):
        registry.get("policy", "v3")
    with pytest.raises(VersionNotFoundError, match="not a version name"):
        registry.get("policy", "latest")
    with pytest.raises(RegistryError, match="unknown role 'critic'"):
        registry.resolve("critic/v0")
    with pytest.raises(VersionNotFoundError, match="no reward version is promoted"):
        registry.resolve("reward")


def test_corrupt_manifest_is_reported_not_listed(registry):
    registry.create_version("policy", write_weights())
    registry.create_version("policy", write_weights())
    (registry.root / "policy" / "v1" / "manifest.json").write_text('{"role": "pol')

    with pytest.raises(CorruptVersionError, match="policy/v1: manifest.json is not JSON"):
        registry.get("policy", "v1")
    assert [v.version for v in registry.versions("policy")] == ["v0"]
    assert [name for name, _ in registry.problems("policy")] == ["v1"]
    with pytest.raises(CorruptVersionError):
        registry.promote("policy", "v1")


def test_manifest_that_names_another_version_is_corrupt(registry):
    registry.create_version("policy", write_weights())
    registry.create_version("policy", write_weights())
    manifest = registry.root / "policy" / "v1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["version"] = "v0"
    manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptVersionError, match="describes policy/v0"):
        registry.get("policy", "v1")


def test_verify_catches_changed_and_missing_files(registry):
    info = registry.create_version("policy", write_weights(b"0123456789"))
    assert registry.verify("policy", "v0") == info

    (info.path / "model.safetensors").write_bytes(b"0123456780")
    with pytest.raises(CorruptVersionError, match="does not match its checksum"):
        registry.verify("policy", "v0")
    (info.path / "model.safetensors").unlink()
    with pytest.raises(CorruptVersionError, match="model.safetensors is missing"):
        registry.verify("policy", "v0")


def test_failed_writer_leaves_no_version(registry):
    def broken(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.create_version("policy", broken)
    assert registry.versions("policy") == []
    assert list((registry.root / "policy").iterdir()) == []


def test_crash_between_weights_and_manifest_leaves_no_visible_version(registry):
    # A real process dies by SIGKILL after writing its weights, before the manifest.
    script = textwrap.dedent(
        f"""
        import os, signal
        from services.common.registry import ModelRegistry

        def write_then_die(folder):
            (folder / "model.safetensors").write_bytes(b"x" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)

        ModelRegistry({str(registry.root)!r}).create_version("policy", write_then_die)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert result.returncode == -9

    role_dir = registry.root / "policy"
    assert [p.name.split("-")[0] for p in role_dir.iterdir()] == [".staging"]
    assert registry.versions("policy") == []
    assert registry.problems("policy") == []

    # The next writer takes v0 and clears the dead writer's leftovers.
    assert registry.create_version("policy", write_weights()).version == "v0"
    assert sorted(p.name for p in role_dir.iterdir()) == ["v0"]


WRITER = """
import sys
from services.common.registry import ModelRegistry

registry = ModelRegistry(sys.argv[1])
for i in range(int(sys.argv[2])):
    def write(folder, i=i):
        (folder / "model.safetensors").write_bytes(bytes([i]) * 300_000)
    info = registry.create_version("policy", write)
    registry.promote("policy", info.version)
"""


def test_concurrent_writers_and_readers(registry):
    """Four processes create and promote versions while threads keep reading."""
    registry.create_version("policy", write_weights())
    registry.promote("policy", "v0")
    writers, per_writer = 4, 3
    stop = threading.Event()
    reads: list[int] = []
    failures: list[str] = []

    def read_continuously() -> None:
        reader = ModelRegistry(registry.root)
        while not stop.is_set():
            try:
                current = reader.promoted("policy")
                assert current is not None and current.status == "promoted"
                assert reader.problems("policy") == []
                for info in reader.versions("policy"):
                    assert "model.safetensors" in info.manifest.files
                reads.append(1)
            except Exception as exc:  # collected: an assert in a thread would be lost
                failures.append(repr(exc))

    readers = [threading.Thread(target=read_continuously) for _ in range(2)]
    for thread in readers:
        thread.start()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(registry.root), str(per_writer)], cwd=REPO
        )
        for _ in range(writers)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    stop.set()
    for thread in readers:
        thread.join()

    assert codes == [0] * writers
    assert failures == []
    assert len(reads) > 10
    total = 1 + writers * per_writer
    assert [v.version for v in registry.versions("policy")] == [f"v{i}" for i in range(total)]
    statuses = [v.status for v in registry.versions("policy")]
    assert statuses.count("promoted") == 1
    assert statuses.count("retired") == total - 1
    assert len(registry.history("policy")) == total


def test_state_file_is_replaced_not_rewritten_in_place(registry):
    """Readers open state.json by path; an in-place rewrite could show them a torn file."""
    registry.create_version("policy", write_weights())
    registry.create_version("policy", write_weights())
    registry.promote("policy", "v0")
    state = registry.root / "policy" / "state.json"
    inode_before = os.stat(state).st_ino
    registry.promote("policy", "v1")
    assert os.stat(state).st_ino != inode_before
    assert not [p for p in state.parent.iterdir() if p.name.endswith(".tmp")]


def test_version_to_load_for_a_reload(model_store):
    assert model_store.version_to_load("policy", "", serving="v0") is None
    assert model_store.version_to_load("policy", "v0", serving="").version == "v0"
    with pytest.raises(VersionNotFoundError):
        model_store.version_to_load("policy", "v9", serving="v0")


def _promoted_and_candidates(registry, candidates: int = 1) -> None:
    registry.create_version("policy", write_weights())
    registry.promote("policy", "v0")
    for _ in range(candidates):
        registry.create_version("policy", write_weights(b"new"), parent="v0")


def test_a_canary_serves_beside_the_promoted_version_until_promoted(registry):
    _promoted_and_candidates(registry)
    canary = registry.start_canary("policy", "v1", 0.2)

    assert (canary.version, canary.share) == ("v1", 0.2)
    serving = registry.serving("policy")
    assert serving.promoted == "v0" and serving.canary == canary
    assert registry.get("policy", "v1").status == "canary"
    assert registry.promoted("policy").version == "v0"

    registry.promote("policy", "v1")  # it held: it serves everyone
    assert registry.serving("policy").canary is None
    assert registry.get("policy", "v1").status == "promoted"
    assert registry.get("policy", "v0").status == "retired"
    assert [h["action"] for h in registry.history("policy")] == ["promote", "canary", "promote"]


def test_a_canary_that_loses_is_rolled_back_and_never_served_again_by_accident(registry):
    _promoted_and_candidates(registry)
    registry.start_canary("policy", "v1", 0.2)
    ended = registry.end_canary("policy", "thumbs-up rate shown lower")

    assert ended.version == "v1"
    assert registry.serving("policy").canary is None
    assert registry.get("policy", "v1").status == "rolled-back"
    assert registry.history("policy")[-1]["reason"] == "thumbs-up rate shown lower"
    with pytest.raises(InvalidTransitionError, match="only a candidate can be a canary"):
        registry.start_canary("policy", "v1", 0.2)


def test_one_canary_at_a_time_of_a_candidate_with_a_sensible_share(registry):
    registry.create_version("policy", write_weights())
    with pytest.raises(InvalidTransitionError, match="no policy version is promoted"):
        registry.start_canary("policy", "v0", 0.2)
    registry.promote("policy", "v0")
    for _ in range(2):
        registry.create_version("policy", write_weights(b"new"), parent="v0")
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(InvalidTransitionError, match="share must lie in"):
            registry.start_canary("policy", "v1", share)
    with pytest.raises(InvalidTransitionError, match="only a candidate"):
        registry.start_canary("policy", "v0", 0.2)  # the promoted one
    registry.start_canary("policy", "v1", 0.2)
    with pytest.raises(InvalidTransitionError, match="policy/v1 is the canary already"):
        registry.start_canary("policy", "v2", 0.2)
    with pytest.raises(InvalidTransitionError, match="no reward canary"):
        registry.end_canary("reward")


def test_promoting_or_rolling_back_over_a_canary_ends_it(registry):
    _promoted_and_candidates(registry, candidates=2)
    registry.start_canary("policy", "v1", 0.5)
    registry.promote("policy", "v2")  # an operator's choice wins over the canary

    assert registry.serving("policy") == Serving("v2", None)
    assert registry.get("policy", "v1").status == "candidate"
    registry.start_canary("policy", "v1", 0.5)
    registry.rollback("policy")  # v2 goes, v0 serves everyone

    assert registry.serving("policy") == Serving("v0", None)
    assert registry.get("policy", "v1").status == "candidate"
