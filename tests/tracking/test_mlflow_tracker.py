"""`kft run --track mlflow` logs a run to a real MLflow server, read back through its client.

One `mlflow server` on 127.0.0.1 serves the module (it takes about 20 s to
start on 2 cores); the last test kills it mid-run, so it stays last.
"""

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import pytest
from click.testing import CliRunner

from kft import cli
from kft import tracking
from kft.errors import KftError
from kft.runs import recipe as recipes
from kft.runs import runner
from tests.helpers.cli import TINY, kft, write_pet_images

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

ARTIFACTS = {"model.keras", "labels.json", "metrics.json", "curves.png", "confusion_matrix.png"}
EPOCHS = ["--set", "head_epochs=1", "--set", "finetune_epochs=1"]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    """An `mlflow server` process with its own SQLite store and proxied artifacts."""

    def __init__(self, folder):
        self.uri = f"http://127.0.0.1:{_free_port()}"
        self.log = open(folder / "server.log", "w")
        self.process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server",
             "--host", "127.0.0.1", "--port", self.uri.rsplit(":", 1)[1], "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_up(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {open(self.log.name).read()[-2000:]}")

    def stop(self):
        """Kills the server and its workers (its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = _Server(tmp_path_factory.mktemp("mlflow_server"))
    started.wait_until_up()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    return write_pet_images(tmp_path_factory.mktemp("tracking") / "pets")


@pytest.fixture(autouse=True)
def _no_tracking_environment(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


class _InterruptAt(keras.callbacks.Callback):
    """Ctrl-C when global epoch `epoch` begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt()


class _StopServerAt(keras.callbacks.Callback):
    """Kills the tracking server when global epoch `epoch` begins."""

    def __init__(self, server, epoch):
        super().__init__()
        self.server, self.epoch = server, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.server.stop()


def _tiny(callback=None):
    recipe = recipes.load(TINY)
    if callback is None:
        return recipe
    return dataclasses.replace(recipe, callbacks=lambda p: [callback])


def _run(recipe, pets, output, uri=None, resume=None):
    overrides = None if resume else ["tracking=mlflow", "head_epochs=1", "finetune_epochs=1"]
    return runner.run(recipe, overrides=overrides, data=None if resume else str(pets),
                      output=str(output), resume=resume, tracking_uri=uri)


def _run_id(run_path):
    return json.loads((run_path / tracking.TRACKING_FILE).read_text())["run_id"]


def _history(run_path):
    with open(run_path / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_logged(client, run_path):
    """The MLflow run holds exactly what the run directory holds."""
    run = client.get_run(_run_id(run_path))
    params = json.loads((run_path / "params.json").read_text())
    assert run.data.params == {key: str(value) for key, value in params.items()}
    rows = _history(run_path)
    for key in rows[0]:
        if key in ("epoch", "stage"):
            continue
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == [(int(row["epoch"]), pytest.approx(float(row[key]), rel=1e-12))
                          for row in rows], key
    # The stage of each epoch, by number; the tag names the stages.
    stages = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "stage"))
    assert stages == [(0, 1.0), (1, 2.0)]
    assert [row["stage"] for row in rows] == ["head", "finetune"]
    assert run.data.tags["kft.stages"] == "1 head: steps 0-0; 2 finetune: steps 1-1"
    metrics = json.loads((run_path / "metrics.json").read_text())
    for key, value in metrics["final"].items():
        assert run.data.metrics[f"final/{key}"] == pytest.approx(value, rel=1e-12)
    assert run.data.metrics["best/val_accuracy"] == pytest.approx(metrics["best"]["val_accuracy"])
    assert {item.path for item in client.list_artifacts(run.info.run_id)} == ARTIFACTS
    assert run.data.tags["kft.recipe"] == "tiny"
    assert run.data.tags["kft.run_dir"] == str(run_path.absolute())
    assert run.data.tags["kft.version"] == __import__("kft").__version__
    assert run.data.tags["kft.status"] == "finished"
    assert run.data.tags["mlflow.runName"] == run_path.name
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    return run


# ------------------------------------------------------------ no training


def test_tracking_kinds_and_missing_mlflow_are_one_clear_error(monkeypatch):
    assert isinstance(tracking.create(""), tracking.NullTracker)
    with pytest.raises(KftError, match="Unknown tracking 'wandb'"):
        tracking.create("wandb")
    with pytest.raises(KftError, match="needs tracking on: add --track mlflow"):
        tracking.create("", uri="http://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    with pytest.raises(KftError, match=r"needs MLflow: pip install 'kft\[tracking\]'"):
        tracking.create("mlflow")


def test_cli_refuses_track_on_resume_and_a_uri_without_tracking(tmp_path, pets):
    resumed = CliRunner().invoke(cli.main, ["run", TINY, "--resume", str(tmp_path),
                                            "--track", "mlflow"])
    assert isinstance(resumed.exception, KftError)
    assert "drop --set/--data/--params/--track" in str(resumed.exception)
    with pytest.raises(KftError, match="needs tracking on"):
        runner.run(_tiny(), data=str(pets), output=str(tmp_path / "runs"),
                   tracking_uri="http://127.0.0.1:1")
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------- training


def test_the_default_store_is_sqlite_in_mlruns(pets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(_tiny(), pets, tmp_path / "runs")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    saved = json.loads((result.run_dir.path / tracking.TRACKING_FILE).read_text())
    assert saved["tracking_uri"] == store
    run = _assert_logged(MlflowClient(tracking_uri=store), result.run_dir.path)
    # Embedded: the artifacts are files under mlruns/.
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))


def test_cli_run_is_logged_to_a_server(server, pets, tmp_path):
    done = kft("run", TINY, "--data", pets, *EPOCHS, "--output", tmp_path / "runs",
               "--track", "mlflow", "--tracking-uri", server.uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [run_path] = list((tmp_path / "runs").iterdir())
    assert f"MLflow: logs to run {_run_id(run_path)} of experiment 'tiny' at {server.uri}" \
        in done.stdout
    assert "View run" not in done.stdout  # MLflow's own URL lines are kft's to print
    client = MlflowClient(tracking_uri=server.uri)
    _assert_logged(client, run_path)
    # Uploaded through the server, byte for byte.
    copy = client.download_artifacts(_run_id(run_path), "metrics.json", str(tmp_path))
    assert open(copy).read() == (run_path / "metrics.json").read_text()
    assert not (tmp_path / "mlruns").exists()


def test_a_resumed_run_continues_the_same_mlflow_run(server, pets, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(_tiny(_InterruptAt(1)), pets, tmp_path, uri=server.uri)
    [run_path] = list(tmp_path.iterdir())
    client = MlflowClient(tracking_uri=server.uri)
    stopped = client.get_run(_run_id(run_path))
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["kft.status"] == "interrupted"
    assert [m.step for m in client.get_metric_history(stopped.info.run_id, "loss")] == [0]

    # No URI given: the one in tracking.json, so the same server and run.
    result = _run(_tiny(), pets, tmp_path, resume=run_path)
    assert _run_id(result.run_dir.path) == stopped.info.run_id
    _assert_logged(client, run_path)
    assert len(client.search_runs([stopped.info.experiment_id])) >= 1
    assert not any(r.data.tags.get("kft.run_dir") == str(run_path.absolute())
                   and r.info.run_id != stopped.info.run_id
                   for r in client.search_runs([stopped.info.experiment_id]))


def test_a_resume_logs_the_epochs_tracking_missed(pets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(KeyboardInterrupt):
        _run(_tiny(_InterruptAt(1)), pets, tmp_path / "runs",
             uri=f"http://127.0.0.1:{_free_port()}")
    [run_path] = list((tmp_path / "runs").iterdir())
    assert capsys.readouterr().out.count("MLflow tracking at") == 1
    assert not (run_path / tracking.TRACKING_FILE).exists()

    # Resumed to a store that works: epoch 0 comes from history.csv.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _run(_tiny(), pets, tmp_path, uri=store, resume=run_path)
    _assert_logged(MlflowClient(tracking_uri=store), run_path)


def _assert_complete_without_tracking(run_path):
    state = json.loads((run_path / "state.json").read_text())
    assert state["status"] == "finished" and state["epoch"] == 2
    assert len(_history(run_path)) == 2
    for name in ARTIFACTS:
        assert (run_path / name).is_file(), name


def test_an_unreachable_server_warns_once_and_the_run_completes(pets, tmp_path, capsys,
                                                                 monkeypatch):
    # A variable the user set wins over kft's retry defaults: no retries here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = _run(_tiny(), pets, tmp_path, uri=f"http://127.0.0.1:{_free_port()}")
    out = capsys.readouterr().out
    assert out.count("MLflow tracking at") == 1, out
    assert "training goes on" in out
    _assert_complete_without_tracking(result.run_dir.path)
    assert not (result.run_dir.path / tracking.TRACKING_FILE).exists()


def test_a_server_that_dies_mid_run_warns_once_and_loses_nothing(server, pets, tmp_path,
                                                                 capsys):
    # Last in the module: it kills the module's server. kft's own retry
    # defaults apply (a few seconds on a refused connection).
    began = time.time()
    result = _run(_tiny(_StopServerAt(server, 1)), pets, tmp_path, uri=server.uri)
    out = capsys.readouterr().out
    assert out.count("MLflow tracking at") == 1, out
    assert "MLflow: logs to run" in out  # it was tracking before the server died
    _assert_complete_without_tracking(result.run_dir.path)
    assert (result.run_dir.path / tracking.TRACKING_FILE).is_file()
    assert time.time() - began < 120
