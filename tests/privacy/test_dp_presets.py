"""The DP presets resolve to valid configs with the paper's DP settings."""

from __future__ import annotations

from fedsb.config import resolve
from fedsb.presets import load_presets


def test_paper_snli_dp_preset() -> None:
    cfg = resolve(None, [("preset", "paper-snli-dp")], load_presets())
    assert (cfg.model.name, cfg.task.name, cfg.federation.clients) == ("bert-base-cased", "snli", 3)
    assert (cfg.dp.mode, cfg.dp.epsilon, cfg.dp.max_grad_norm) == ("sample", 1.0, 0.1)
    assert (cfg.train.batch_size, cfg.train.lr) == (32, 5e-4)
    assert resolve(None, [("preset", "paper-snli-dp"), ("dp.epsilon", "3")], load_presets()).dp.epsilon == 3.0


def test_dp_quickstart_preset_is_offline_and_private() -> None:
    cfg = resolve(None, [("preset", "dp-quickstart")], load_presets())
    assert cfg.model.name == "minilm" and cfg.model.device == "cpu"
    assert cfg.dp.mode == "sample" and cfg.dp.epsilon == 1.0 and cfg.init.source == "federated"


def test_epsilon_alone_turns_on_sample_level_dp() -> None:
    assert resolve(None, [("dp.epsilon", "1")], {}).dp.mode == "sample"
    assert resolve(None, [("epsilon", "2")], {}).dp.mode == "sample"
