"""HParams summaries: what TensorBoard's own readers and HParams backend make of the recorder's files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups, metadata

from neqtune.search.hparams import hparam_values, hparams_summaries, run_name
from neqtune.search.recorder import FINAL_METRICS, ResultRecorder

LAYERS = ["features.0.0", "features.1.conv.0.0", "classifier.conv"]
BASE = {"model": {"name": "mbv2-w0.35"}, "budget": {"scheme": "mbv2-w0.35_scheme_3"}, "training": {"epochs": 2}}


def stub_trial(root: Path, trial_id: str, config: dict[str, Any]) -> Trial:
    """A real Tune ``Trial`` object that is never scheduled (no Ray cluster needed)."""
    storage = StorageContext(storage_path=str(root / "ray"), experiment_dir_name="exp", trial_dir_name=f"trial_{trial_id}")
    return Trial("neqtune", config=config, trial_id=trial_id, stub=True, storage=storage)


def epoch_result(epoch: int, val: float, test: float, frozen: list[float]) -> dict[str, Any]:
    return {
        "epoch": epoch, "train_loss": 1.0 / epoch, "train_top1": 50.0, "val_top1": val, "test_top1": test, "lr": 0.1,
        "best_val_top1": val, "best_epoch": epoch, "test_top1_at_best_val": test, "budget_params": 55_920,
        "total_conv_params": 382_048, "params_updated": 55_000, "budget_gap": 920, "neurons_updated": 100, "neurons_total": 400,
        "frozen_pct": 75.0, "flops_saved": 1e6, "flops_saved_pct": 40.0, "layer_frozen_pct": frozen, "layer_flops_saved": [1.0, 2.0, 3.0],
        "epoch_time_s": 1.5, "velocity_time_s": 0.1, "node_id": "n", "hostname": "h", "pid": 1, "layer_names": LAYERS,
    }  # fmt: skip


def record(root: Path, experiment: str, trials: dict[str, tuple[dict[str, Any], bool]]) -> Path:
    """Drive a ResultRecorder through each trial's start, two epochs and its end (True: completes, False: fails)."""
    directory = root / experiment
    recorder = ResultRecorder(directory, experiment, BASE, searched=list(next(iter(trials.values()))[0]), echo=lambda _: None)
    made = [stub_trial(root, trial_id, config) for trial_id, (config, _) in trials.items()]
    for trial, (_, completes) in zip(made, trials.values(), strict=True):
        recorder.on_trial_start(0, made, trial)
        recorder.on_trial_result(0, made, trial, epoch_result(1, 60.0, 61.0, [100.0, 50.0, 0.0]))
        recorder.on_trial_result(0, made, trial, epoch_result(2, 70.0, 69.0, [0.0, 25.0, 0.0]))
        if completes:
            recorder.on_trial_complete(0, made, trial)
        else:
            recorder.on_trial_error(0, made, trial)
    recorder.on_experiment_end(made)
    return directory


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hparams")
    record(
        root,
        "exp-a",
        {"a1": ({"budget.policy": "velocity", "training.lr": 0.05}, True), "a2": ({"budget.policy": "random", "training.lr": 0.2}, False)},
    )
    record(root, "exp-b", {"b1": ({"budget.policy": "su", "training.lr": 0.1}, True)})
    return root


def hparams_backend(logdir: Path) -> backend_context.Context:
    """TensorBoard's HParams plugin backend over ``logdir``, as ``tensorboard --logdir`` builds it."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    return backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer))


A1_RUN = "velocity,mbv2-w0.35_scheme_3,init=random,seed=0,lr=0.05,trial=a1"


def test_event_reader_sees_curves_layer_groups_and_hparams(logdir: Path) -> None:
    assert sorted(p.name for p in (logdir / "exp-a" / "tensorboard").iterdir()) == [
        "random,mbv2-w0.35_scheme_3,init=random,seed=0,lr=0.2,trial=a2",
        A1_RUN,
    ]
    events = EventAccumulator(str(logdir / "exp-a" / "tensorboard" / A1_RUN))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {f"updated_pct_by_layer/{layer}" for layer in LAYERS} <= set(scalars)
    assert [e.value for e in events.Scalars("updated_pct_by_layer/features.1.conv.0.0")] == [50.0, 75.0]
    assert {f"final/{name}" for name in FINAL_METRICS} <= set(scalars)
    assert events.Scalars("final/test_top1_at_best_val")[-1].value == pytest.approx(69.0)
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.group_name == f"exp-a/{A1_RUN}"
    assert start.hparams["budget.policy"].string_value == "velocity"
    assert start.hparams["training.lr"].number_value == pytest.approx(0.05)
    assert start.hparams["training.no_wd_keys"].string_value == "[norm, bias]"
    assert "budget.ratio" not in start.hparams  # null: shown as missing
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_hparams_dashboard_compares_trials_of_several_experiments(logdir: Path) -> None:
    backend = hparams_backend(logdir)
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, include_metrics=True,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING, api_pb2.STATUS_UNKNOWN],
    )  # fmt: skip
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run()
    by_name = {group.name.rpartition("=")[2]: group for group in groups.session_groups}
    assert set(by_name) == {"a1", "a2", "b1"}
    assert by_name["b1"].name == "exp-b/su,mbv2-w0.35_scheme_3,init=random,seed=0,lr=0.1,trial=b1"
    assert by_name["b1"].hparams["budget.policy"].string_value == "su"
    assert [s.status for s in by_name["a2"].sessions] == [api_pb2.STATUS_FAILURE]
    trials = pd.read_parquet(logdir / "exp-a" / "trials.parquet").set_index("trial_id")
    metrics = {m.name.tag: m.value for m in by_name["a1"].metric_values}
    assert metrics["final/best_val_top1"] == pytest.approx(trials.loc["a1", "best_val_top1"])
    assert metrics["final/test_top1_at_best_val"] == pytest.approx(trials.loc["a1", "test_top1_at_best_val"])
    assert metrics["final/epochs_run"] == 2
    experiment = get_experiment.Handler(context.RequestContext(), backend, "", api_pb2.GetExperimentRequest()).run()
    names = {info.name: info for info in experiment.hparam_infos}
    assert {"budget.policy", "training.lr", "training.seed", "model.name"} <= set(names)
    assert names["training.lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert list(names["training.nesterov"].domain_discrete.values) != []  # booleans: a two-value domain
    assert {m.name.tag for m in experiment.metric_infos} == {f"final/{name}" for name in FINAL_METRICS}
    # The searched keys are the ones that differ, listed first; constant ones (bn_update, an unset params) do not.
    assert [info.name for info in experiment.hparam_infos[:2]] == ["budget.policy", "training.lr"]
    assert names["budget.policy"].differs and names["training.lr"].differs
    assert not any(names[key].differs for key in ("budget.bn_update", "budget.params", "budget.ratio", "model.name"))


def test_run_names_say_policy_budget_first_mask_seed_and_searched_values() -> None:
    config = {"budget.policy": "random", "budget.scheme": None, "budget.ratio": 0.125, "budget.params": None,
              "budget.initialization": "su", "training.seed": 42, "training.lr": 0.0312345, "model.name": "mcunet-in1",
              "data.root": "/data/my sets"}  # fmt: skip
    assert run_name("t_00001", config, ["budget.policy", "training.lr", "model.name"]) == (
        "random,ratio=0.125,init=su,seed=42,lr=0.03123,model=mcunet-in1,trial=t_00001"
    )
    assert run_name("t", {**config, "budget.params": 22_410}, ["data.root"]) == "random,params=22410,init=su,seed=42,root=_data_my_sets,trial=t"
    labelled = {**config, "data.name": "image-folder", "data.label": "my sets"}  # a data set searched: its label, once
    assert run_name("t", labelled, ["data.root", "data.name"]) == "random,ratio=0.125,init=su,seed=42,data=my_sets,trial=t"
    full = {**config, "budget.policy": "full", "budget.ratio": None, "budget.initialization": "full"}
    assert run_name("t", full) == "full,all,init=full,seed=42,trial=t"
    channels = {**config, "budget.unit": "input_channel", "budget.ratio": None, "budget.memory": 15_936}
    assert run_name("t", channels) == "random,unit=input_channel,memory=15936,init=su,seed=42,trial=t"


def test_hparam_values_keep_scalars_and_drop_nulls() -> None:
    values = hparam_values({"a": 1, "b": math.nan, "c": None, "d": True, "e": "x", "f": [1, 2]})
    assert values == {"a": 1.0, "d": True, "e": "x", "f": "[1, 2]"}
    summaries = hparams_summaries(
        {"t.flag": None, "t.lr": 0.1},
        metric_tags=["final/x"],
        types={"t.flag": pa.bool_(), "t.lr": pa.float64()},
        session="e/t",
        start_time_s=1.0,
        end_time_s=2.0,
        succeeded=False,
    )
    assert [s.value[0].tag for s in summaries] == [metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG]
    experiment = metadata.parse_experiment_plugin_data(summaries[0].value[0].metadata.plugin_data.content)
    flag = next(info for info in experiment.hparam_infos if info.name == "t.flag")
    assert flag.type == api_pb2.DATA_TYPE_BOOL  # typed from the column even where the value is null
