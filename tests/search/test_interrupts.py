"""Signals in a search worker: raised in computations, deferred while a store writes."""

from __future__ import annotations

import os
import signal
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from search import interrupts


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    # The handler runs between bytecodes of the main thread; give it the chance.
    time.sleep(0.2)


class _SignalBeforeTrial(optuna.samplers.RandomSampler):
    """A sampler that sends SIGINT inside ``study.ask``, after the trial is stored RUNNING."""

    def before_trial(self, study, trial):
        super().before_trial(study, trial)
        _signal_self()


def _objective(trial):
    interrupts.raise_pending()
    return trial.suggest_float("x", 0.0, 1.0)


def _study(sampler=None):
    return optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def test_ask_signal_leaves_trial_running():
    # The hazard itself: an interrupt between storing the trial and the objective.
    study = _study(_SignalBeforeTrial(seed=0))
    with interrupts.handling(signal.SIGINT, once=True), pytest.raises(KeyboardInterrupt):
        study.optimize(_objective, n_trials=1, catch=(Exception,))
    assert [trial.state for trial in study.trials] == [TrialState.RUNNING]


def test_deferred_ask_signal_fails_trial():
    study = _study(_SignalBeforeTrial(seed=0))
    with interrupts.handling(signal.SIGINT, once=True):
        with pytest.raises(KeyboardInterrupt, match="SIGINT"), interrupts.deferred():
            study.optimize(_objective, n_trials=1, catch=(Exception,))
    assert [trial.state for trial in study.trials] == [TrialState.FAIL]


def test_tell_signal_raises_after_block():
    study = _study()
    reached = []
    with interrupts.handling(signal.SIGINT, once=True):
        with pytest.raises(KeyboardInterrupt, match="SIGINT"), interrupts.deferred():
            # Callbacks run after Optuna stored the finished trial.
            study.optimize(_objective, n_trials=1, callbacks=[lambda *_: _signal_self()])
            reached.append("end of the block")
    assert reached == ["end of the block"]
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE]


def test_signal_inside_immediate_raises_at_once():
    started = time.monotonic()
    with interrupts.handling(signal.SIGINT, once=True), pytest.raises(KeyboardInterrupt):
        with interrupts.deferred(), interrupts.immediate():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert time.monotonic() - started < 4


def test_nested_deferred_raises_at_end():
    reached = []
    with interrupts.handling(signal.SIGINT, once=True), pytest.raises(KeyboardInterrupt):
        with interrupts.deferred(), interrupts.immediate():
            with interrupts.deferred():
                _signal_self()
                reached.append("end of the store call")
            reached.append("after the store call")
    assert reached == ["end of the store call"]


def test_once_ignores_later_signals():
    with interrupts.handling(signal.SIGINT, signal.SIGTERM, once=True):
        with pytest.raises(KeyboardInterrupt):
            _signal_self()
        # Neither a second Ctrl-C nor the parent's SIGTERM interrupts the recording.
        _signal_self()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)


def test_once_simultaneous_signals_one_interrupt(monkeypatch):
    # A Ctrl-C and the parent's SIGTERM can arrive together: Python then runs both handlers
    # one after the other, and reports a handler missing by then as an unraisable OSError.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    both = {signal.SIGINT, signal.SIGTERM}
    with interrupts.handling(*both, once=True):
        with pytest.raises(KeyboardInterrupt):
            signal.pthread_sigmask(signal.SIG_BLOCK, both)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
            time.sleep(0.2)
        time.sleep(0.2)
    assert [str(report.exc_value) for report in unraisable] == []


def test_repeated_signal_raises_inside_deferred():
    reached = []
    with interrupts.handling(signal.SIGINT, once=False), pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            _signal_self()
            reached.append("after the first signal")
            # Only the first signal waits for the end of the block.
            _signal_self()
            reached.append("after the second signal")
    assert reached == ["after the first signal"]


def test_handling_exit_restores_handler():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.handling(signal.SIGINT, once=True), pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            _signal_self()
    assert signal.getsignal(signal.SIGINT) is before
    interrupts.raise_pending()


def test_handling_keeps_ignored_signal():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handling(signal.SIGINT, signal.SIGTERM, once=False) as handled:
            assert handled == (signal.SIGTERM,)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _signal_self()
    finally:
        signal.signal(signal.SIGINT, before)


def test_nested_handling_restores_outer_block():
    with interrupts.handling(signal.SIGINT, once=False):
        outer = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            with interrupts.handling(signal.SIGINT, once=True), interrupts.deferred():
                _signal_self()
        assert signal.getsignal(signal.SIGINT) is outer
        # The outer block received no signal, and raises a new one where it lands.
        interrupts.raise_pending()
        with pytest.raises(KeyboardInterrupt):
            _signal_self()
