"""minilora.adapters: named adapters on one untouched base, as pure functions (every call returns a new bank)."""

from __future__ import annotations

import numpy as np
import pytest
from interop_helpers import randomize

from minilora import GPTConfig, LoraConfig, adapters, forward, forward_mixed, init_lora, init_params, merge
from minilora.tree import flatten, map_leaves

CFG = GPTConfig(vocab_size=19, context=6, d_model=8, n_layer=2, n_head=2, d_mlp=12)
PARAMS = randomize(init_params(CFG, 0, dtype=np.float64), 1)
TOKENS = np.random.default_rng(0).integers(0, CFG.vocab_size, (3, 6))
SQL = (randomize(init_lora(CFG, LoraConfig(r=2, targets=("wq", "wv")), 0, dtype=np.float64), 2),
       LoraConfig(r=2, targets=("wq", "wv")))
CHAT = (randomize(init_lora(CFG, LoraConfig(r=1, alpha=3, targets=("mlp_in",)), 1, dtype=np.float64), 3),
        LoraConfig(r=1, alpha=3, targets=("mlp_in",)))


def _bank():
    bank = adapters.new(PARAMS, CFG)
    return adapters.add(adapters.add(bank, "sql", *SQL), "chat", *CHAT)


def test_add_switch_disable_delete_are_pure():
    empty = adapters.new(PARAMS, CFG)
    one = adapters.add(empty, "sql", *SQL)
    two = adapters.add(one, "chat", *CHAT)
    on = adapters.switch(two, "chat")
    off = adapters.disable(on)
    gone = adapters.delete(on, "chat")
    assert empty["adapters"] == {} and list(one["adapters"]) == ["sql"] and list(two["adapters"]) == ["sql", "chat"]
    assert (two["active"], on["active"], off["active"], gone["active"]) == (None, "chat", None, None)
    assert list(off["adapters"]) == ["sql", "chat"] and list(gone["adapters"]) == ["sql"]
    for bank in (empty, one, two, on, off, gone):
        assert bank["base"] is PARAMS  # one base, never copied


def test_forward_uses_the_active_adapter_and_the_base_stays_untouched():
    before = flatten(map_leaves(np.copy, PARAMS))
    bank = _bank()
    np.testing.assert_array_equal(adapters.forward(bank, TOKENS), forward(PARAMS, TOKENS, CFG))
    sql, chat = adapters.switch(bank, "sql"), adapters.switch(bank, "chat")
    np.testing.assert_array_equal(adapters.forward(sql, TOKENS), forward(PARAMS, TOKENS, CFG, *SQL))
    np.testing.assert_array_equal(adapters.forward(chat, TOKENS), forward(PARAMS, TOKENS, CFG, *CHAT))
    np.testing.assert_array_equal(adapters.forward(adapters.disable(chat), TOKENS), forward(PARAMS, TOKENS, CFG))
    assert np.abs(adapters.forward(sql, TOKENS) - adapters.forward(chat, TOKENS)).max() > 1e-3
    merged = adapters.merged(sql)
    np.testing.assert_array_equal(merged["blocks"][0]["wq"]["W"], merge(PARAMS, *SQL)["blocks"][0]["wq"]["W"])
    np.testing.assert_allclose(forward(merged, TOKENS, CFG), adapters.forward(sql, TOKENS), rtol=0, atol=1e-12)
    assert adapters.merged(bank) is PARAMS
    assert adapters.active(sql) == ("sql", *SQL) and adapters.active(bank) is None
    assert all(np.array_equal(v, flatten(PARAMS)[k]) for k, v in before.items())


def test_mixed_rows_by_name():
    bank = _bank()
    got = adapters.forward_mixed(bank, TOKENS, ["chat", None, "sql"], impl="gather")
    # rows are ordered by name inside: chat = 0, sql = 1
    np.testing.assert_array_equal(got, forward_mixed(PARAMS, TOKENS, CFG, [CHAT, SQL], [0, -1, 1], impl="gather"))
    np.testing.assert_allclose(got[2:], forward(PARAMS, TOKENS[2:], CFG, *SQL), rtol=0, atol=1e-12)


def test_errors_name_what_is_wrong():
    bank = _bank()
    with pytest.raises(ValueError, match="'sql' exists already"):
        adapters.add(bank, "sql", *SQL)
    with pytest.raises(KeyError, match=r"no adapter named 'code'.*\['chat', 'sql'\]"):
        adapters.switch(bank, "code")
    with pytest.raises(KeyError, match="no adapter named 'code'"):
        adapters.delete(bank, "code")
    with pytest.raises(TypeError, match="non-empty string"):
        adapters.add(bank, "", *SQL)
    with pytest.raises(TypeError, match="bank must be a dict"):
        adapters.switch({"base": PARAMS}, "sql")
    wrong = (init_lora(CFG, LoraConfig(r=2, targets=("wq",)), 0), LoraConfig(r=2, targets=("wq",)))  # float32
    with pytest.raises(TypeError, match=r"adapters\[0\]: .*dtype float32 but the base is float64"):
        adapters.add(bank, "f32", *wrong)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        adapters.forward_mixed(bank, TOKENS, ["sql", "nope", None])
    with pytest.raises(ValueError, match="params"):
        adapters.new({"wte": np.zeros((2, 2))}, CFG)
