import pytest

pytest.importorskip("peft", reason="needs the [train] extra")

from training.lora import build_lora_config  # noqa: E402


def test_lora_config_is_plain_lora_vllm_can_serve() -> None:
    config = build_lora_config(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"])
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.modules_to_save is None and config.use_dora is False
    assert config.task_type == "CAUSAL_LM"
