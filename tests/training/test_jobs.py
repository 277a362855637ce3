"""Job builders and dry runs: the YAML loads with azure.ai.ml.load_job and validates offline."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fakes.inputs import write_data, write_stack_outputs
from common.pins import CLOUD_TORCH_PIN
from training import environment, hyperparams, jobs, submit


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


@pytest.fixture
def argv(tmp_path: Path) -> list[str]:
    return ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--data", str(write_data(tmp_path / "data")), "--dry-run"]


def _dry_run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    import common.azure

    def no_client(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a dry run must not build an MLClient")

    monkeypatch.setattr(common.azure, "make_ml_client", no_client)
    assert submit.main(argv) == 0
    return capsys.readouterr().out


def _offline_client():
    from azure.ai.ml import MLClient

    class NoCredential:
        def get_token(self, *args, **kwargs):  # noqa: ANN002, ANN003
            raise AssertionError("validation must not ask for a token")

    return MLClient(NoCredential(), subscription_id="s", resource_group_name="rg", workspace_name="ws")


def test_sft_dry_run_yaml_loads_and_validates(argv, capsys, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from azure.ai.ml import load_job

    text = _dry_run(argv + ["--instance-count", "2", "--epochs", "2", "--method", "full"], capsys, monkeypatch)
    assert text.startswith("# finetune-phi sft job (dry run)")
    path = tmp_path / "job.yml"
    path.write_text(text)
    job = load_job(path)
    assert type(job).__name__ == "Command"
    assert job.compute == "gpu-a100" and job.experiment_name == "finetune-phi"
    assert job.tags["finetune-phi"] == "sft"
    assert job.environment.image == environment.BASE_IMAGE
    assert "azureml-mlflow==1.62.0.post6" in job.environment.conda_file["dependencies"][-1]["pip"]
    assert job.inputs["train_file"].path == str(tmp_path / "data" / "train.jsonl")
    assert job.outputs["model"].type == "uri_folder"
    assert job.resources.instance_count == 2 and job.distribution.process_count_per_instance == 1
    assert "--config trainer/settings.yaml " in job.command and "--epochs" not in job.command
    staged = yaml.safe_load((Path(job.code) / "trainer" / "settings.yaml").read_text())  # every resolved setting
    assert staged["epochs"] == 2.0 and staged["method"] == "full" and "# epochs: 2.0\n" in text
    result = _offline_client().jobs.validate(job)
    assert result.passed, result.error_messages


def test_registry_dry_run_yaml_loads_with_registry_uris(argv, capsys, monkeypatch) -> None:  # noqa: ANN001
    from azure.ai.ml import load_job

    text = _dry_run(argv + ["--recipe", "registry", "--learning-rate", "1e-5"], capsys, monkeypatch)
    assert "# Model Phi-4: the registry default Phi-4 is the only current Phi" in text
    job = load_job(io.StringIO(text))
    assert type(job).__name__ == "PipelineJob"
    node = job.jobs["chat_completion"]
    assert node.component == "azureml://registries/azureml/components/chat_completion_pipeline/labels/latest"
    # the default is the current Phi the registry fine-tunes, a fixed name (a dry run reads no registry)
    assert node.inputs["mlflow_model_path"]._data.path == "azureml://registries/azureml/models/Phi-4/labels/latest"
    assert node.inputs["learning_rate"]._data == 1e-5  # the flag wins over the tutorial's 5e-6
    assert node.inputs["num_train_epochs"]._data == 3 and node.inputs["deepspeed_stage"]._data == "2"
    assert job.settings.force_rerun is True and job.settings.continue_on_step_failure is False
    assert job.settings.default_compute == "gpu-a100"
    assert job.tags["finetune-phi"] == "registry"
    result = _offline_client().jobs.validate(job)
    assert result.passed, result.error_messages


def test_dry_run_imports_no_credential_code(argv) -> None:  # noqa: ANN001
    code = (
        "import sys\n"
        "from training.submit import main\n"
        f"main({argv!r})\n"
        "heavy = [m for m in ('azure.identity', 'azure.ai.ml', 'torch', 'transformers', 'trl', 'mlflow') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr
    assert yaml.safe_load(done.stdout)["type"] == "command"


def test_model_folder_becomes_an_input(tmp_path: Path) -> None:
    tiny_model_dir = tmp_path / "model"
    tiny_model_dir.mkdir()
    (tiny_model_dir / "config.json").write_text("{}")
    spec = jobs.build_sft_job(jobs.SftJob(model=str(tiny_model_dir), compute="c", environment="azureml:e:1",
                                          code_dir=tmp_path, device="cuda",
                                          train_data="azureml:t:1", eval_data="azureml:v:1"))
    assert spec["inputs"]["model"] == {"type": "uri_folder", "path": str(tiny_model_dir.resolve()), "mode": "ro_mount"}
    assert "--model_name_or_path ${{inputs.model}} --device cuda" in spec["command"]
    assert "--model_revision" not in spec["command"]  # a folder is what it is: no hub revision
    assert "distribution" not in spec
    job = jobs.load(spec)
    assert job.inputs["model"].path == str(tiny_model_dir.resolve())


def test_registry_params_merge_order_and_filtering() -> None:
    merged = jobs.merge_registry_params({"learning_rate": 1e-5, "unknown_to_component": 1}, {"num_train_epochs": 1},
                                        allowed=set(jobs.TUTORIAL_PARAMS) | {"learning_rate"})
    assert merged["learning_rate"] == 1e-5 and merged["num_train_epochs"] == 1
    assert "unknown_to_component" not in merged
    with pytest.raises(ValueError, match="max_seq_length"):
        jobs.merge_registry_params(None, {"max_seq_length": 512}, allowed={"num_train_epochs"})
    assert hyperparams.registry_params({"method": "full", "max_length": 512, "epochs": 2.0}) == {
        "apply_lora": "false", "max_seq_length": 512, "num_train_epochs": 2}


# ---------------------------------------------------------------- the trainer's flags and defaults


def test_every_trainer_hyperparameter_is_exposed_with_the_presets_default() -> None:
    from training.trainer import fine_tune, settings

    parser = submit.build_parser()
    parsed = vars(fine_tune.parse_args(["--train_file", "t", "--eval_file", "e", "--output_dir", "o"]))
    assert set(parsed) - set(hyperparams.JOB_FLAGS) == set(hyperparams.names())
    assert {"device", "model_revision", "model_name_or_path"} <= set(hyperparams.JOB_FLAGS)
    defaults = settings.preset()
    help_text = " ".join(parser.format_help().split())
    for name in hyperparams.names():
        assert "--" + name.replace("_", "-") in help_text, name
        if defaults[name] is not None:
            assert defaults[name] == parsed[name] or name == "gradient_checkpointing", name  # auto is resolved
    assert set(hyperparams.REGISTRY_INPUTS) <= set(hyperparams.names())


def test_flags_reach_the_trainer_through_the_settings_file(tmp_path: Path) -> None:
    """Submit's flags over the preset, dumped as the job's settings file, read back by the trainer as the same values."""
    from training.trainer import fine_tune, settings

    args = submit.build_parser().parse_args(
        ["--learning-rate", "3e-5", "--packing", "false", "--method", "full", "--max_steps", "7", "--lora-target-modules", "qkv_proj"])
    given = hyperparams.given(args)
    assert set(given) == {"learning_rate", "packing", "method", "max_steps", "lora_target_modules"}
    written = tmp_path / "settings.yaml"
    written.write_text(settings.dump(settings.load("default", given)))
    parsed = fine_tune.parse_args(["--config", str(written), "--train_file", "t", "--eval_file", "e", "--output_dir", "o"])
    assert (parsed.learning_rate, parsed.packing, parsed.method, parsed.max_steps, parsed.lora_target_modules) == (
        3e-5, False, "full", 7, "qkv_proj")
    assert list(yaml.safe_load(written.read_text())) == list(hyperparams.names())  # every hyperparameter, resolved
    assert parsed.gradient_checkpointing is True and parsed.lora_r == 16  # auto, resolved for a full fine-tune


def test_help_shows_trainer_defaults_without_heavy_imports() -> None:
    # The mechanism, not a stopwatch (a loaded machine would fail a time limit at random): no heavy import.
    code = (
        "import sys\n"
        "from training.submit import build_parser\n"
        "text = build_parser().format_help()\n"
        "heavy = [m for m in ('azure', 'torch', 'transformers', 'trl', 'mlflow', 'promptflow') if m in sys.modules]\n"
        "print(heavy)\n"
        "print(text)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    heavy, _, text = done.stdout.partition("\n")
    assert heavy == "[]"
    text = " ".join(text.split())
    assert "--learning-rate" in text and "(default: lora)" in text and "(default: 2048)" in text
    done = subprocess.run([sys.executable, "-m", "training.submit", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--dry-run" in done.stdout


# ---------------------------------------------------------------- environment


def test_environment_pins_come_from_pyproject(tmp_path: Path) -> None:
    import tomllib

    train = tomllib.loads(environment.PYPROJECT.read_text())["project"]["optional-dependencies"]["train"]
    pins = environment.train_pins()
    ours = [p for p in pins if not p.startswith(("mlflow==", "azureml-mlflow"))]
    assert ours == [CLOUD_TORCH_PIN if p.startswith("torch==") else p for p in train if not p.startswith("mlflow==")]
    assert "torch==2.10.0" in pins  # the CUDA 12 build Azure ML's driver runs, not the local CUDA 13 one
    assert "mlflow==3.15.0" in pins and "azureml-mlflow==1.62.0.post6" in pins

    spec = environment.environment_spec()
    assert spec == environment.environment_spec()  # stable version for unchanged content
    changed = tmp_path / "pyproject.toml"
    changed.write_text(environment.PYPROJECT.read_text().replace('"peft==0.21.2"', '"peft==0.21.3"'))
    assert environment.environment_spec(changed)["version"] != spec["version"]


def test_environment_entity_accepts_the_spec() -> None:
    from azure.ai.ml.entities import Environment

    spec = environment.environment_spec()
    env = Environment(name=spec["name"], version=spec["version"], image=spec["image"], conda_file=spec["conda_file"])
    assert env.conda_file["dependencies"][0] == "python=3.11"
    assert environment.environment_ref(spec) == f"azureml:finetune-phi-train:{spec['version']}"


def test_azure_dry_run_with_tiny_builds_nothing(argv, capsys, monkeypatch) -> None:  # noqa: ANN001
    from training import local_runs

    spec = yaml.safe_load(_dry_run(argv + ["--model", "tiny"], capsys, monkeypatch))
    assert spec["inputs"]["model"]["path"] == str(local_runs.tiny_model_dir().resolve())
    assert "--model_name_or_path ${{inputs.model}}" in spec["command"]
    assert not local_runs.tiny_model_dir().exists()


@pytest.mark.parametrize("model", ["/no/such/model", "./no-such-model", "~/no-such-model"])
def test_a_model_path_that_does_not_exist_is_refused(argv, model, monkeypatch) -> None:  # noqa: ANN001
    """A typo in a local path must not become a job (or a dry-run YAML) that fails on the cluster."""
    from common.cli import UserError

    monkeypatch.setenv("HOME", "/nonexistent-home")
    with pytest.raises(UserError, match="no such folder"):
        submit.main(argv + ["--model", model])
    assert submit.main(argv + ["--model", "microsoft/Phi-3-mini-4k-instruct"]) == 0  # a hub id still passes


def test_shm_size_is_checked_before_anything_is_built(argv, capsys) -> None:  # noqa: ANN001
    for bad in ("lots", "0g", "16 gb"):
        with pytest.raises(SystemExit) as exit_:
            submit.main(argv + ["--shm-size", bad])
        assert exit_.value.code == 2 and "expected a size such as 16g" in capsys.readouterr().err
    assert submit.main(argv + ["--shm-size", "32G"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["resources"]["shm_size"] == "32g"


# ---------------------------------------------------------------- one builder, staged trainer, model inputs


def test_dry_run_and_submit_build_the_same_job(argv, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Both paths go through azure_submit.build_job: only the references Azure decides differ."""
    from fakes.ml_client import FakeMLClient
    from training import azure_submit

    flags = ["--display-name", "same", "--learning-rate", "3e-5", "--model", "microsoft/Phi-4-mini-instruct"]
    printed = yaml.safe_load(_dry_run(argv + flags, capsys, monkeypatch))
    sent: list[dict] = []
    real_load = jobs.load
    monkeypatch.setattr(azure_submit.jobs, "load", lambda spec: sent.append(spec) or real_load(spec))
    argv = [a for a in argv if a != "--dry-run"]
    assert submit.main(argv + flags + ["--no-stream"], ml_client=FakeMLClient()) == 0
    (spec,) = sent
    decided_by_azure = {"name", "environment", "inputs"}
    assert {k: v for k, v in spec.items() if k not in decided_by_azure} == {
        k: v for k, v in printed.items() if k not in decided_by_azure}
    assert set(spec) - set(printed) == {"name"}
    assert spec["environment"].startswith("azureml:finetune-phi-train:")
    assert printed["environment"]["image"] == environment.BASE_IMAGE


def test_trainer_is_staged_as_a_package_once(tmp_path: Path) -> None:
    from training import code_staging

    source = tmp_path / "src"
    (source / "__pycache__").mkdir(parents=True)
    (source / "fine_tune.py").write_text("print('hi')\n")
    (source / "helpers.py").write_text("X = 1\n")
    (source / "__pycache__" / "fine_tune.cpython-311.pyc").write_bytes(b"\0")
    staged = code_staging.stage_trainer("lora_r: 8\n", source, tmp_path / "staged")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == [
        "trainer/fine_tune.py", "trainer/helpers.py", "trainer/settings.yaml"]
    assert (staged / code_staging.SETTINGS_FILE).read_text() == "lora_r: 8\n"
    assert code_staging.stage_trainer("lora_r: 8\n", source, tmp_path / "staged") == staged  # unchanged: reused
    assert code_staging.stage_trainer("lora_r: 4\n", source, tmp_path / "staged") != staged  # other settings: new
    (source / "helpers.py").write_text("X = 2\n")
    assert code_staging.stage_trainer("lora_r: 8\n", source, tmp_path / "staged") != staged  # changed: a new folder
    assert not [p for p in (tmp_path / "staged").iterdir() if p.name.startswith(".staging-")]


def test_registered_model_dry_run_loads_as_a_model_input(argv, capsys, monkeypatch) -> None:  # noqa: ANN001
    from azure.ai.ml import load_job

    text = _dry_run(argv + ["--model", "azureml:phi-ft:3"], capsys, monkeypatch)
    assert "A registered model is a custom_model input here" in text
    job = load_job(io.StringIO(text))
    assert job.inputs["model"].type == "custom_model"
    result = _offline_client().jobs.validate(job)
    assert result.passed, result.error_messages
    with pytest.raises(ValueError, match="model input type"):
        jobs.build_sft_job(jobs.SftJob(model="azureml:m:1", compute="c", environment="azureml:e:1", code_dir=Path("."),
                                       device="cuda", train_data="t", eval_data="e", model_input_type="uri_folder"))
