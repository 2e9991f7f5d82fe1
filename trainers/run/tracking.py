"""Weights & Biases tracking at the edge: offline unless logged in, disabled by ``logging.wandb=false``."""
from __future__ import annotations

import os

from trainers.config import LoggingConfig


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


class Tracker:
    def __init__(self, cfg: LoggingConfig, run_dir: str, name: str, config: dict, enabled: bool) -> None:
        self.run = None
        if not (cfg.wandb and enabled):
            return
        import wandb  # heavy import kept at the edge

        mode = cfg.wandb_mode if cfg.wandb_mode != "auto" else ("online" if _logged_in() else "offline")
        self.run = wandb.init(project=cfg.project, name=name, dir=run_dir, config=config, mode=mode,
                              settings=wandb.Settings(silent=True))

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def log_image(self, key: str, path: str, step: int | None = None) -> None:
        """A PNG (e.g. the end-of-run Pareto plot) as a W&B image."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def log_samples(self, key: str, rows: list[dict], step: int) -> None:
        """A few evaluation completions as a W&B table (columns = the rows' keys), to read what the numbers mean."""
        if self.run is not None and rows:
            import wandb

            cols = list(rows[0])
            self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
