"""TensorBoard HParams summaries of one trial: its config and its final metrics.

The HParams dashboard reads three summaries from a run directory: an
*experiment* (which hyper-parameters and metrics exist, with their types),
a *session start* (this trial's values) and a *session end* (its status).
The metric values are the last values of ordinary scalar tags in the same
run, so the recorder writes the final metrics as scalars next to these.

Every trial writes the same experiment summary (all config keys, the same
metric tags). TensorBoard uses one of them for the whole log directory, so
the summaries must not depend on the trial: string hyper-parameters get no
discrete domain (a domain taken from one experiment would hide the trials of
another from the dashboard's default filter); the table and the
parallel-coordinates view take their values from the sessions.

The experiment summary marks the searched keys as the ones that differ
(``HParamInfo.differs``) and lists them first: the dashboard shows those
columns and leaves the constant ones (``budget.bn_update``, an unset
``budget.params``) unticked. Each trial's run directory has a name a person
can read in a legend (:func:`run_name`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

HParamValue = bool | float | str


def hparam_values(config: Mapping[str, Any]) -> dict[str, HParamValue]:
    """The scalar config values the HParams dashboard can show.

    Strings, numbers and booleans are kept; lists become their text
    (``[norm, bias]``); nulls and non-finite numbers are left out (the
    dashboard shows them as missing).
    """
    values: dict[str, HParamValue] = {}
    for key, value in config.items():
        if isinstance(value, bool | str):
            values[key] = value
        elif isinstance(value, int | float):
            if math.isfinite(value):
                values[key] = float(value)
        elif isinstance(value, list | tuple):
            values[key] = "[" + ", ".join(str(item) for item in value) + "]"
    return values


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# Searched keys that change which data set a trial reads: its run name shows the data set's label instead.
DATA_SET_KEYS = ("data.name", "data.root", "data.label")


def run_name(trial_id: str, config: Mapping[str, Any], searched: Sequence[str] = ()) -> str:
    """The TensorBoard run directory name of a trial, readable in a legend.

    Policy, the unit when it is not neurons (``unit=input_channel``),
    budget (the scheme, else ``params=B``, ``memory=M`` or ``ratio=r``, else
    ``all``), first mask, seed, then the other searched keys as
    ``key=value`` (the leaf of the dotted key; ``model`` for its ``name``;
    ``data=<data.label>`` for a searched data set), then the trial id, which keeps names unique. Example:
    ``velocity,mbv2-w0.35_scheme_3,init=random,seed=0,lr=0.1,trial=3f2a1_00000``.
    ``/`` and white space in values become ``_``.
    """
    if config.get("budget.scheme"):
        budget = str(config["budget.scheme"])
    elif config.get("budget.params") is not None:
        budget = f"params={config['budget.params']}"
    elif config.get("budget.memory") is not None:
        budget = f"memory={config['budget.memory']}"
    elif config.get("budget.ratio") is not None:
        budget = f"ratio={_short(config['budget.ratio'])}"
    else:
        budget = "all"
    parts = [str(config.get("budget.policy")), budget, f"init={config.get('budget.initialization')}", f"seed={config.get('training.seed')}"]
    if config.get("budget.unit") not in (None, "neuron"):
        parts.insert(1, f"unit={config['budget.unit']}")  # input channels rather than the study's neurons
    shown = {"budget.policy", "budget.scheme", "budget.params", "budget.memory", "budget.ratio", "budget.initialization", "budget.unit",
             "training.seed"}  # fmt: skip
    for key in searched:
        if key in DATA_SET_KEYS and config.get("data.label") is not None:  # its label (a folder's own name), once
            if "data.label" not in shown:
                parts.append(f"data={_short(config['data.label'])}")
                shown.add("data.label")
        elif key not in shown:
            section, _, leaf = key.rpartition(".")
            parts.append(f"{section.split('.')[0] if leaf == 'name' else leaf}={_short(config.get(key))}")
    parts.append(f"trial={trial_id}")
    return "".join("_" if char == "/" or char.isspace() else char for char in ",".join(parts))


def _data_type(arrow_type: pa.DataType | None, value: Any) -> api_pb2.DataType.ValueType:
    if arrow_type is not None:
        if pa.types.is_boolean(arrow_type):
            return api_pb2.DATA_TYPE_BOOL
        if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
            return api_pb2.DATA_TYPE_FLOAT64
        return api_pb2.DATA_TYPE_STRING
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, int | float):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def hparams_summaries(
    config: Mapping[str, Any],
    *,
    metric_tags: Sequence[str],
    types: Mapping[str, pa.DataType],
    session: str,
    start_time_s: float,
    end_time_s: float,
    succeeded: bool,
    searched: Sequence[str] = (),
) -> list[summary_pb2.Summary]:
    """The experiment, session-start and session-end summaries of one trial.

    Args:
        config: the trial's flat config (dotted keys), as in the tables.
        metric_tags: scalar tags, written in the same run, that hold the
            trial's final metrics.
        types: Arrow types of the config columns (fix each hyper-parameter's
            type even where this trial's value is null).
        session: a name unique over the log directory (experiment/trial id).
        start_time_s, end_time_s: seconds since the epoch.
        succeeded: the trial ended normally (else it is marked failed).
        searched: the dotted keys the search varies: marked as differing
            between trials and listed first.

    Returns:
        Three summaries to hand to a TensorBoard file writer, in order.
    """
    infos = []
    for key in sorted(config, key=lambda key: key not in searched):  # searched keys first, in config order otherwise
        data_type = _data_type(types.get(key), config[key])
        info = api_pb2.HParamInfo(name=key, type=data_type, differs=key in searched)
        if data_type == api_pb2.DATA_TYPE_BOOL:
            info.domain_discrete.extend([False, True])
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    start = plugin_data_pb2.SessionStartInfo(group_name=session, start_time_secs=start_time_s)
    for key, value in hparam_values(config).items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, float):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = value
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if succeeded else api_pb2.STATUS_FAILURE,
        end_time_secs=end_time_s,
    )
    return [
        _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ]
