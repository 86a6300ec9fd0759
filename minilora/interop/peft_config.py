"""PEFT's adapter_config.json for LoRA: which options minilora represents, and PEFT's rules for which modules a
config adapts, reproduced from PEFT's source (peft 0.21: ``check_target_module_exists``, ``get_pattern_key``,
``LoraModel._create_and_replace``, ``_maybe_include_all_linear_layers``) rather than guessed:

- target_modules as a string is a regex that must match the whole module name (``re.fullmatch``);
  "all-linear" means every Conv1D/Linear layer but the output layer.
- target_modules as a list matches a name equal to an entry, or ending in "." + entry: "c_proj" matches both
  transformer.h.N.attn.c_proj and transformer.h.N.mlp.c_proj; "attn.c_proj" only the first.
- layers_to_transform (an int or a list) applies only to names matched by suffix, and finds the layer index
  with layers_pattern (or, without one, the first ".<name>.<number>." of the module name).
- exclude_modules uses the same two forms (regex string, or list of names / suffixes) and wins.
- rank_pattern / alpha_pattern: the first key (in file order) for which ``(.*\\.)?(key)$`` matches the module
  name gives its r / lora_alpha; otherwise r / lora_alpha.
- the scale is lora_alpha / r, or lora_alpha / √r with use_rslora.
- fan_in_fan_out: PEFT forces it to True for GPT-2's Conv1D layers; lora_A is (r, in) and lora_B (out, r)
  either way, so both values are read alike.

Every other option must be absent or hold its default, or minilora refuses it by name: DoRA, lora_bias, a bias
other than "none", modules_to_save, initialisations that change the base weights (PiSSA, OLoRA, CorDA, LoftQ,
LoRA-GA), layer_replication, trainable tokens, ... Unknown keys (PEFT only warns about them) are refused too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Options with no effect on the adapted function once A and B are given (bookkeeping, or initialisation only).
HARMLESS = {
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "megatron_core", "qalora_group_size", "eva_config", "ensure_weight_tying",
    "init_lora_weights", "loftq_config", "corda_config", "lora_ga_config", "runtime_config",
}
READ = {"r", "lora_alpha", "target_modules", "exclude_modules", "lora_dropout", "fan_in_fan_out", "use_rslora",
        "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"}
# Options minilora cannot represent unless they hold the value given here (None also means "off").
MUST_BE_OFF = {
    "bias": ("none", "trains the base model's biases too"),
    "use_dora": (False, "DoRA adds a learned magnitude vector per layer"),
    "lora_bias": (False, "adds a bias to lora_B"),
    "modules_to_save": (None, "trains and saves whole copies of other modules"),
    "layer_replication": (None, "duplicates base layers"),
    "trainable_token_indices": (None, "trains rows of the embedding"),
    "target_parameters": (None, "adapts parameters instead of modules"),
    "megatron_config": (None, "Megatron parallel layers"),
    "use_qalora": (False, "quantisation-aware LoRA"),
    "alora_invocation_tokens": (None, "activated LoRA switches the adapter on per token"),
    "arrow_config": (None, "Arrow routes between several adapters"),
    "use_bdlora": (None, "block-diagonal LoRA"),
    "kasa_config": (None, "a LoRA variant"),
    "velora_config": (None, "a LoRA variant"),
    "monteclora_config": (None, "a LoRA variant"),
}
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
TASK_TYPES = (None, "CAUSAL_LM", "FEATURE_EXTRACTION")


@dataclass(frozen=True)
class PeftOptions:
    """The options of a PEFT LoRA config that decide which modules are adapted and how."""

    r: int
    lora_alpha: float
    target_modules: object  # str (a regex) or tuple of names
    exclude_modules: object = None
    lora_dropout: float = 0.0
    use_rslora: bool = False
    layers_to_transform: object = None  # None, int or tuple of ints
    layers_pattern: object = None  # None, str or tuple of str
    rank_pattern: tuple = ()  # ((pattern, r), ...) in file order
    alpha_pattern: tuple = ()

    def rank_alpha(self, key: str) -> tuple[int, float]:
        """(r, lora_alpha) PEFT gives module ``key``."""
        return (_pattern_value(self.rank_pattern, key, self.r), _pattern_value(self.alpha_pattern, key,
                                                                              self.lora_alpha))

    def scale(self, key: str) -> float:
        r, alpha = self.rank_alpha(key)
        return alpha / (math.sqrt(r) if self.use_rslora else r)

    def matches(self, key: str) -> bool:
        """PEFT's check_target_module_exists for this config and module name."""
        if _listed(self.exclude_modules, key):
            return False
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, key) is not None
        if key in self.target_modules:
            return True
        if not any(key.endswith(f".{t}") for t in self.target_modules):
            return False
        if self.layers_to_transform is None or self.layers_to_transform == ():
            return True
        index = _layer_index(key, self.layers_pattern)
        if index is None:
            return False
        wanted = self.layers_to_transform
        return index == wanted if isinstance(wanted, int) else index in wanted


def _pattern_value(pattern: tuple, key: str, default):
    for p, value in pattern:
        if re.match(rf"(.*\.)?({p})$", key):
            return value
    return default


def _listed(modules, key: str) -> bool:
    if not modules:
        return False
    if isinstance(modules, str):
        return re.fullmatch(modules, key) is not None
    return key in modules or any(key.endswith(f".{m}") for m in modules)


def _layer_index(key: str, layers_pattern) -> int | None:
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in (layers_pattern,) if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


# ---- reading adapter_config.json ------------------------------------------------------------------------

def _names(value, field: str, where):
    """A regex string, or a tuple of names (PEFT writes sets as lists), or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{where}: {field} must be a string (a regex) or a list of module names, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value, field: str, where, *, integer: bool):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
        raise ValueError(f"{where}: {field} must be a positive {'int' if integer else 'number'}, got {value!r}")
    return value


def _pattern(value, field: str, where, *, integer: bool) -> tuple:
    if value in (None, {}):
        return ()
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {field} must be an object {{module pattern: value}}, got {value!r}")
    return tuple((k, _number(v, f"{field}[{k!r}]", where, integer=integer)) for k, v in value.items())


def _check_off(cfg: dict, where) -> None:
    unknown = sorted(set(cfg) - HARMLESS - READ - set(MUST_BE_OFF))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; minilora refuses what it does not know rather "
                         "than ignore it")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type is {cfg.get('peft_type')!r}; minilora reads LoRA adapters ('LORA')")
    if cfg.get("task_type") not in TASK_TYPES:
        raise ValueError(f"{where}: task_type={cfg['task_type']!r}: minilora is a causal LM (task_type "
                         f"{' / '.join(str(t) for t in TASK_TYPES)})")
    for name, (off, what) in MUST_BE_OFF.items():
        value = cfg.get(name, off)
        if value != off and value not in (None, [], {}):
            raise ValueError(f"{where}: {name}={value!r} is not supported ({what}); minilora's LoRA needs "
                             f"{name}={off!r}")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise ValueError(f"{where}: init_lora_weights={init!r} changes the base weights at initialisation, so "
                         "this adapter is only right on PEFT's modified base; convert it to a plain LoRA first "
                         "(save_pretrained(..., path_initial_model_for_weight_conversion=...))")


def options_from_peft(cfg: dict, where="adapter_config.json") -> PeftOptions:
    """PeftOptions of a PEFT LoRA config, or ValueError naming the option minilora cannot represent."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where} must hold a JSON object")
    _check_off(cfg, where)
    targets = _names(cfg.get("target_modules"), "target_modules", where)
    if targets is None or targets == ():
        raise ValueError(f"{where}: target_modules is empty: PEFT would not know which modules to adapt")
    layers, pattern = cfg.get("layers_to_transform"), cfg.get("layers_pattern")
    if isinstance(targets, str) and (layers is not None or pattern is not None):
        raise ValueError(f"{where}: layers_to_transform / layers_pattern cannot be used with a regex "
                         "target_modules (PEFT refuses this too)")
    if pattern and layers is None:
        raise ValueError(f"{where}: layers_pattern needs layers_to_transform (PEFT refuses this too)")
    if isinstance(layers, list):
        layers = tuple(layers)
    if layers is not None and not (_is_int(layers) or (isinstance(layers, tuple) and all(map(_is_int, layers)))):
        raise ValueError(f"{where}: layers_to_transform must be an int or a list of ints, got {layers!r}")
    if isinstance(targets, str) and targets.lower() == "all-linear":
        targets = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers; the output layer lm_head is left out
    dropout = cfg.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{where}: lora_dropout must be in [0, 1), got {dropout!r}")
    for flag in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(cfg.get(flag, False), bool):
            raise ValueError(f"{where}: {flag} must be true or false, got {cfg[flag]!r}")
    return PeftOptions(
        r=_number(cfg.get("r", 8), "r", where, integer=True),
        lora_alpha=_number(cfg.get("lora_alpha", 8), "lora_alpha", where, integer=False),
        target_modules=targets,
        exclude_modules=_names(cfg.get("exclude_modules"), "exclude_modules", where),
        lora_dropout=float(dropout), use_rslora=cfg.get("use_rslora", False),
        layers_to_transform=layers, layers_pattern=tuple(pattern) if isinstance(pattern, list) else pattern,
        rank_pattern=_pattern(cfg.get("rank_pattern"), "rank_pattern", where, integer=True),
        alpha_pattern=_pattern(cfg.get("alpha_pattern"), "alpha_pattern", where, integer=False),
    )
