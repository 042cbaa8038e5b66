"""An unavailable device is refused with a clear message, as an error that both ValueError handlers and
torch-style RuntimeError handlers catch."""

from __future__ import annotations

import numpy as np
import pytest

from dist_llm.data import get_batch
from dist_llm.utils.devices import DeviceUnavailableError, resolve_device


def test_the_device_error_is_both_a_value_error_and_a_runtime_error() -> None:
    # cuda:99 exists on no machine, with CUDA or without
    for handler in (RuntimeError, ValueError, DeviceUnavailableError):
        with pytest.raises(handler, match=r"device 'cuda:99' requested but "):
            get_batch(np.arange(100), batch_size=2, context_length=4, device="cuda:99")


def test_code_written_against_torch_catches_it() -> None:
    try:
        resolve_device("cuda:99")
    except RuntimeError as e:  # what torch raises for an unavailable device
        message = str(e)
    assert message.startswith("device 'cuda:99' requested but ")
    assert ("CUDA is not available" in message) or ("CUDA devices exist" in message)


def test_a_malformed_device_name_is_the_same_error() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"invalid device 'gpu:x'"):
        resolve_device("gpu:x")
