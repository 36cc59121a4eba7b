"""The teardown helper that empties DeepSpeed's method-level lru_cache (it holds the model otherwise)."""

from __future__ import annotations

import functools

from disttune.train.teardown import _clear_caches


def _decorate(func):
    def wrapped_fn(*args, **kwargs):  # like deepspeed's instrument_w_nvtx: no functools.wraps
        return func(*args, **kwargs)

    return wrapped_fn


class Holder:
    @_decorate
    @functools.lru_cache(maxsize=None)  # noqa: B019, UP033 -- DeepSpeed's own pattern, the leak under test
    def cached(self, item):
        return id(item)


def test_clear_caches_reaches_through_a_decorator_closure():
    Holder().cached(object())
    inner = vars(Holder)["cached"].__closure__[0].cell_contents
    assert inner.cache_info().currsize == 1
    _clear_caches(vars(Holder)["cached"])
    assert inner.cache_info().currsize == 0


def test_clear_caches_on_a_plain_lru_cache_and_on_nothing():
    @functools.cache
    def square(x):
        return x * x

    square(3)
    _clear_caches(square)
    assert square.cache_info().currsize == 0
    _clear_caches(None)  # the class attribute is gone in another DeepSpeed version: nothing to do
