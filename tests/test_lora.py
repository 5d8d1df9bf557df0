"""LoRA against the formula written out in float64 (its files: test_peft_adapter.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyllm_lib.config import PRESETS, LoRAConfig, ModelConfig
from tinyllm_lib.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    dense_weight,
    disable_adapters,
    lora_layers,
    merge_lora,
    merged_state_dict,
    trainable_report,
    unmerge_lora,
)
from tinyllm_lib.model import TinyLLM, parameter_counts

CFG = PRESETS["test"]
LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(config: ModelConfig = CFG, seed: int = 0) -> TinyLLM:
    torch.manual_seed(seed)
    return TinyLLM(config).eval()


def randomize_b(model: TinyLLM, seed: int = 1) -> None:
    """Give every B a non-zero value, as training would, so the update is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            w = layer.lora_B.weight
            w.copy_(torch.randn(w.shape, generator=gen) * 0.1)


def ids(seq: int = 10) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (2, seq), generator=torch.Generator().manual_seed(5))


def reference_linear(layer: LoRALinear, x: torch.Tensor, scale: float) -> torch.Tensor:
    """x W^T + scale x A^T B^T, in float64."""
    w, a, b = (t.double() for t in (layer.base_layer.weight, layer.lora_A.weight,
                                    layer.lora_B.weight))
    x = x.double()
    return x @ w.T + scale * (x @ a.T) @ b.T


def test_init_matches_peft_and_model_starts_equal_to_base():
    base = make_model()
    model = apply_lora(make_model(), LoRAConfig(rank=4, target_modules="all-linear"))
    for _, layer in lora_layers(model):
        bound = 1 / math.sqrt(layer.base_layer.in_features)  # kaiming_uniform(a=sqrt 5)
        a = layer.lora_A.weight
        assert a.abs().max() <= bound and a.abs().max() > 0.8 * bound
        assert torch.count_nonzero(layer.lora_B.weight) == 0
    with torch.no_grad():
        assert torch.equal(model(ids()), base(ids()))


@pytest.mark.parametrize("rslora, expected", [(False, 8 / 4), (True, 8 / 2)])
def test_scale_and_forward_follow_the_formula(rslora, expected):
    model = apply_lora(make_model(), LoRAConfig(rank=4, alpha=8, use_rslora=rslora))
    randomize_b(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.scale == expected
    x = torch.randn(3, CFG.hidden_size)
    with torch.no_grad():
        got = layer(x).double()
    assert (got - reference_linear(layer, x, expected)).abs().max() < 1e-5


def test_only_lora_parameters_train_and_counts_match_the_shapes():
    model = apply_lora(make_model(), LoRAConfig(rank=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[4] for n in trainable} == {"q_proj", "v_proj"}
    kv = CFG.kv_heads * CFG.head_dim
    per_layer = 8 * (CFG.hidden_size + CFG.hidden_size) + 8 * (CFG.hidden_size + kv)
    expected_trainable = CFG.num_layers * per_layer
    expected_total = sum(parameter_counts(CFG).values()) + expected_trainable  # tied: once
    assert count_parameters(model) == (expected_trainable, expected_total)
    report = trainable_report(model)
    share = 100 * expected_trainable / expected_total
    assert report == (f"trainable params: {expected_trainable:,} || all params: "
                      f"{expected_total:,} || trainable%: {share:.4f}")


def test_seed_default_config_trains_under_one_percent():
    torch.manual_seed(0)
    model = apply_lora(TinyLLM(ModelConfig()), LoRAConfig())
    print(trainable_report(model))
    trainable, total = count_parameters(model)
    assert trainable == 6 * 2 * 8 * (512 + 512)
    assert 0.003 < trainable / total < 0.006


def test_all_linear_targets_every_linear_except_lm_head():
    untied = ModelConfig(**{**CFG.__dict__, "tie_embeddings": False})
    model = apply_lora(make_model(untied), LoRAConfig(target_modules="all-linear"))
    wrapped = {path.rpartition(".")[2] for path, _ in lora_layers(model)}
    assert wrapped == set(LINEAR_NAMES)
    assert len(lora_layers(model)) == 7 * CFG.num_layers
    assert not isinstance(model.lm_head, LoRALinear)
    assert lora_layers(model)[0][1].config.target_modules == tuple(sorted(LINEAR_NAMES))


def test_unknown_target_lists_the_available_names():
    with pytest.raises(ValueError, match="qproj") as err:
        apply_lora(make_model(), LoRAConfig(target_modules=("qproj",)))
    assert all(name in str(err.value) for name in LINEAR_NAMES + ["lm_head"])


def test_tied_lm_head_is_refused_and_applying_twice_is_an_error():
    with pytest.raises(ValueError, match="tied"):
        apply_lora(make_model(), LoRAConfig(target_modules=("lm_head",)))
    model = apply_lora(make_model(), LoRAConfig())
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())


def test_merge_and_unmerge_are_exact():
    model = apply_lora(make_model(), LoRAConfig(rank=4, alpha=16, target_modules="all-linear"))
    randomize_b(model)
    layer = model.model.layers[1].mlp.down_proj
    original = layer.base_layer.weight.detach().clone()
    a, b = layer.lora_A.weight.double(), layer.lora_B.weight.double()
    with torch.no_grad():
        before = model(ids())
        merge_lora(model)
        merged = model(ids())
    expected_w = original.double() + 4.0 * b @ a
    assert (layer.base_layer.weight.double() - expected_w).abs().max() < 1e-6
    assert (merged - before).abs().max() < 1e-5  # the branch is not added a second time
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    with torch.no_grad():
        unmerge_lora(model)
        after = model(ids())
    assert (layer.base_layer.weight - original).abs().max() < 1e-6
    assert (after - before).abs().max() < 1e-5


def test_disable_adapters_gives_the_base_exactly_and_switches_back_on():
    base = make_model()
    model = apply_lora(make_model(), LoRAConfig(rank=4, target_modules="all-linear"))
    randomize_b(model)
    with torch.no_grad():
        adapted, plain = model(ids()), base(ids())
        assert not torch.equal(adapted, plain)
        with disable_adapters(model):
            assert torch.equal(model(ids()), plain)
        assert torch.equal(model(ids()), adapted)
        with pytest.raises(RuntimeError, match="inside"), disable_adapters(model):
            raise RuntimeError("inside")
        assert torch.equal(model(ids()), adapted)  # back on after an exception too
    merge_lora(model)
    with pytest.raises(ValueError, match="disable_adapters: .* already merged"):
        with disable_adapters(model):
            pass
    with pytest.raises(ValueError, match="no LoRA layers"):
        with disable_adapters(base):
            pass


def test_merged_state_dict_is_a_plain_model_with_the_update_folded_in():
    model = apply_lora(make_model(), LoRAConfig(rank=4))
    randomize_b(model)
    plain = make_model()
    plain.load_state_dict(merged_state_dict(model))
    with torch.no_grad():
        assert (plain(ids()) - model(ids())).abs().max() < 1e-5
    assert all("lora" not in k for k in merged_state_dict(model))


def test_dropout_acts_only_on_the_lora_branch_in_train_mode():
    model = apply_lora(make_model(), LoRAConfig(dropout=0.5))
    layer = model.model.layers[0].self_attn.v_proj
    x = torch.randn(4, CFG.hidden_size)
    layer.train()
    with torch.no_grad():
        # B = 0: whatever dropout does to the branch, the base path is untouched.
        assert torch.equal(layer(x), layer.base_layer(x))
        randomize_b(model)
        train_a, train_b = layer(x), layer(x)
        layer.eval()
        evaluated = layer(x)
    assert not torch.equal(train_a, train_b)
    assert (evaluated.double() - reference_linear(layer, x, layer.scale)).abs().max() < 1e-5


class Int8Linear(nn.Module):
    """A base layer that is not an ``nn.Linear``: int8 codes and one scale per output row
    (as a quantized layer keeps its weight), with the ``BaseLinear`` protocol."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True) / 127
        self.register_buffer("codes", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("row_scale", scale)

    def dense_weight(self) -> torch.Tensor:
        return self.codes.float() * self.row_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight())


def test_lora_adapts_any_base_linear_through_its_dense_weight():
    model = make_model()
    for block in model.model.layers:
        block.self_attn.q_proj = Int8Linear(block.self_attn.q_proj)
    apply_lora(model, LoRAConfig(rank=4, alpha=8))  # q_proj and v_proj: both kinds of base
    layers = dict(lora_layers(model))
    assert isinstance(layers["model.layers.0.self_attn.q_proj"].base_layer, Int8Linear)
    randomize_b(model)
    x = torch.randn(2, 5, CFG.hidden_size)
    for layer in layers.values():
        weight = dense_weight(layer.base_layer)
        expected = x @ (weight + layer.delta_weight()).T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.merged_weight(), weight + layer.delta_weight())
    with disable_adapters(model):
        layer = layers["model.layers.0.self_attn.q_proj"]
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"q_proj's base is a Int8Linear, not an nn.Linear"):
        merge_lora(model)
    with pytest.raises(ValueError, match=r"q_proj.base_layer is a Int8Linear, not an nn.Linear"):
        merged_state_dict(model)  # no plain weight to export
    assert not any(layer.merged for layer in layers.values())  # refused before any change
