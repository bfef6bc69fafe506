"""Both backends are ``Dispatcher``s: the campaign and the CLI hold either through the protocol,
so each has every method it declares, with its parameters. (They fulfil it structurally, which a
type checker sees at ``open_dispatcher``; this keeps the check in the test run too.)"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from physflow.dispatch.base import Dispatcher
from physflow.dispatch.globus_backend import GlobusDispatcher
from physflow.dispatch.parsl_backend import ParslDispatcher

DECLARED = [name for name, value in vars(Dispatcher).items() if callable(value) and not name.startswith("_")]


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_protocol_declares_the_four_methods():
    assert DECLARED == ["submit", "submit_service", "on_close", "close"]


@pytest.mark.parametrize("backend", [ParslDispatcher, GlobusDispatcher])
def test_backend_has_every_declared_method_with_its_parameters(backend):
    for name in DECLARED:
        assert parameters(getattr(backend, name)) == parameters(getattr(Dispatcher, name)), (backend, name)
