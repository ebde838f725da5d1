"""Config validation: bad values raise ValueError naming the field and what is allowed."""

import pytest

import normtheory as nt


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("d", 0, ">= 2"),
        ("d", -4, ">= 2"),
        ("L", 0, ">= 1"),
        ("n", 0, ">= 1"),
        ("d_ff", 0, ">= 1"),
        ("arch", "mid", "post, pre"),
        ("loss", "hinge", "linear, xent, mse"),
        ("dtype", "float16", "float32, float64"),
        ("eps", -1.0, ">= 0"),
        ("L", 2.5, "integer"),
        ("mixln_rho", 1.5, "[0, 1]"),
        ("batch", 0, ">= 1"),
        ("attention", "softmax", "uniform, xavier"),
        ("heads", 3, "heads must divide d"),
        ("heads", 0, ">= 1"),
        ("inputs", "images", "gaussian, text"),
        ("tied", True, "inputs='text'"),
        ("inputs", "text", "loss='xent'"),
    ],
)
def test_bad_config_value_names_field_and_allowed_values(field, value, allowed):
  """Each invalid field value raises ValueError whose message names the field and the allowed values."""
  with pytest.raises(ValueError) as info:
    nt.Config(**{field: value})
  assert field in str(info.value) and allowed in str(info.value)


def test_d_ff_defaults_to_d_and_archs_match_registry():
  """d_ff=None means d (Theorem 1's d×d matrices); every Config arch has an implementation."""
  assert nt.Config(d=48).d_ff == 48
  assert set(nt.ARCHS) == set(nt.ARCHITECTURES)


def test_api_rejects_bad_seeds_chunk_and_method():
  """grad_norms rejects zero seeds, a zero chunk and an unknown method with ValueError."""
  cfg = nt.Config(d=8, L=1, n=2)
  for kwargs, word in [({"seeds": 0}, "seeds"), ({"chunk": 0}, "chunk"), ({"method": "fast"}, "method")]:
    with pytest.raises(ValueError, match=word):
      nt.grad_norms(cfg, **kwargs)


def test_text_inputs_use_the_byte_vocabulary_and_presets_only_set_fields():
  """inputs="text" picks vocab 256 (and refuses another); Gaussian inputs keep 1000; the realistic preset
  is xavier attention, 8 heads, text inputs, and a preset is a plain dict of Config fields."""
  assert nt.Config(inputs="text", loss="xent").vocab == 256
  assert nt.Config(loss="xent").vocab == 1000
  with pytest.raises(ValueError, match="vocab"):
    nt.Config(inputs="text", loss="xent", vocab=1000)
  realistic = nt.config.preset("realistic")
  assert realistic == {"attention": "xavier", "heads": 8, "inputs": "text"}
  cfg = nt.Config(d=64, loss="xent", **realistic)
  assert (cfg.attention, cfg.heads, cfg.inputs, cfg.vocab) == ("xavier", 8, "text", 256)
  assert nt.config.reported_params(cfg)[-1] == "E" and "E" not in nt.config.reported_params(nt.Config())
  with pytest.raises(ValueError, match="preset"):
    nt.config.preset("huge")
