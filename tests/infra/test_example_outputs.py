"""docs/examples/stack-outputs.json (used by the README's offline dry runs) keeps to the contract."""
from __future__ import annotations

import json
from pathlib import Path

from infra.outputs import REQUIRED_KEYS, load_stack_outputs


def test_example_outputs_file_has_exactly_the_contract_keys(repo_root: Path) -> None:
    path = repo_root / "docs" / "examples" / "stack-outputs.json"
    assert set(json.loads(path.read_text())) == set(REQUIRED_KEYS)
    outputs = load_stack_outputs(path, env={})
    assert outputs.compute_vm_size == "Standard_NC24ads_A100_v4" and outputs.compute_max_nodes == 1
