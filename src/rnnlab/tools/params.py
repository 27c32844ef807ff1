"""The whole of params.yaml as one typed tree, for tools, benchmarks and tests.

    params = load_params(Path("params.yaml"))      # -> Params; one clear error otherwise
    params.jena.lookback, params.models["gru"].units, params.seed_list

The stages never load the whole tree: each builds only the sections it reads
(``stages/_params.py``), so that editing one section's schema reruns only the stages that
read it. Each section's schema lives beside the code it configures; this module only
gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnlab.core.config import from_mapping, read_yaml_mapping
from rnnlab.data.download import SourceParams
from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import JenaParams
from rnnlab.lecture.gradient_study import ExplodeParams, GradientsParams
from rnnlab.nn.schema import (
    ARCHITECTURES,
    ModelSpec,
    check_variant_names,
    fields_read,
    variant_spec,
)
from rnnlab.training.params import INITS, TrainParams
from rnnlab.training.seeds import RunParams

PARAMS_FILE = Path("params.yaml")

__all__ = ["ARCHITECTURES", "INITS", "DataParams", "ExplodeParams", "GradientsParams",
           "ImdbParams", "JenaParams", "ModelSpec", "PARAMS_FILE", "Params", "SourceParams",
           "TrainParams", "fields_read", "load_params"]


@dataclass(frozen=True)
class DataParams:
    jena: SourceParams
    imdb: SourceParams


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""
    seed: int
    device: str
    data: DataParams
    jena: JenaParams
    imdb: ImdbParams
    train: TrainParams
    gradients: GradientsParams
    models: dict[str, ModelSpec]
    seeds: tuple[int, ...] | None = None   # train each variant once per seed; null/[] = seed

    def validate(self, where: str) -> None:
        check_variant_names(self.models, f"{where}: models")
        self.run.validate(where)

    @property
    def run(self) -> RunParams:
        return RunParams(seed=self.seed, device=self.device, seeds=self.seeds)

    @property
    def seed_list(self) -> list[int]:
        return self.run.seed_list

    def variant(self, name: str) -> ModelSpec:
        return variant_spec(self.models, name)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole file; any problem is one ConfigError naming the key."""
    return from_mapping(Params, read_yaml_mapping(path), where=str(path))
