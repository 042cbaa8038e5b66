"""torchrun's elastic restarts (`--max-restarts N`): refuse a setup that would hang, and make a restarted
worker group resume instead of starting over.

torchrun tells its workers TORCHELASTIC_MAX_RESTARTS (the --max-restarts value) and
TORCHELASTIC_RESTART_COUNT (restarts so far). Since torch 2.5 the c10d rendezvous shares its TCP store
with the workers across restarts; a restarted group then meets the previous group's keys in it and waits
in init_process_group until the timeout (pytorch/pytorch#135712), silently. With
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment every round gets a fresh store. So a run
that may be restarted is refused at its first start when that setting is missing, when it is cheap to fix,
not at the restart, when it would hang.

A restarted worker (restart count above 0) resumes from the newest complete checkpoint in the run
directory, as `--resume auto` does, whatever the command line said: the original `--resume` (none, or a
path) describes the first start, not the progress made since.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from dist_llm.checkpoint import list_complete
from dist_llm.config import ConfigError, RunConfig

FRESH_STORE_VAR = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def _count(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0"))
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def restarts(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(restarts so far, restarts allowed) from torchrun's environment; (0, 0) outside torchrun."""
    env = os.environ if env is None else env
    return _count(env, "TORCHELASTIC_RESTART_COUNT"), _count(env, "TORCHELASTIC_MAX_RESTARTS")


def check_restartable(env: Mapping[str, str] | None = None) -> None:
    """ConfigError, with the fix, when torchrun may restart this run but a restart would hang."""
    env = os.environ if env is None else env
    _, allowed = restarts(env)
    # torchrun also reports whether the workers use its store: "False" means nothing is shared (the
    # variable was set for torchrun, or its rendezvous does not share), whatever this process's environment.
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") != "False" and env.get(FRESH_STORE_VAR) != "1"
    if allowed > 0 and shared:
        raise ConfigError(
            f"torchrun --max-restarts={allowed} needs {FRESH_STORE_VAR}=1 in torchrun's environment: "
            f"without it a restarted worker group hangs until dist.timeout_s (pytorch/pytorch#135712); "
            f"start it as `{FRESH_STORE_VAR}=1 torchrun ...` (launch/torchrun.sh and launch/multinode.sh "
            f"set it), or use --max-restarts=0")


def resume_after_restart(cfg: RunConfig, env: Mapping[str, str] | None = None) -> tuple[RunConfig, str]:
    """The config a (re)started worker runs, and a note for the log ("" on a first start).

    On a restart: `--resume auto`, so the newest complete checkpoint in run.dir is taken; but a
    `--resume PATH` is kept while run.dir has no checkpoint of its own yet (the crash came before the
    first one), so the run still starts from PATH and not from scratch."""
    count, allowed = restarts(env)
    if count == 0:
        return cfg, ""
    resume = cfg.run.resume
    own = list_complete(os.path.join(cfg.run.dir, "checkpoints"))
    if resume not in ("", "auto") and not own:
        how = f"from --resume {resume} again (run.dir has no complete checkpoint yet)"
    else:
        resume = "auto"
        how = f"from the newest complete checkpoint in {cfg.run.dir} (--resume auto)"
    note = f"elastic restart {count} of at most {allowed}: resuming {how}"
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=resume)), note


def prepare(cfg: RunConfig, say=print, env: Mapping[str, str] | None = None) -> RunConfig:
    """Before any work: check_restartable, then resume_after_restart (its note goes to `say`)."""
    check_restartable(env)
    cfg, note = resume_after_restart(cfg, env)
    if note:
        say(note)
    return cfg
