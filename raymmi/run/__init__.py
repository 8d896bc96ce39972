"""The one layer that touches Ray: tasks and Ray Data pipelines composing the pure parts."""

from raymmi.run._cells import generate_cells, ingest_cells
from raymmi.run._datasets import read_dataset
from raymmi.run._evaluate import evaluate_plates, summary_text
from raymmi.run._export import export
from raymmi.run._images import generate_images, ingest_images
from raymmi.run._normalize import normalize
from raymmi.run._plates import generate_plates, ingest_plates
from raymmi.run._preprocess import preprocess_cells
from raymmi.run._runtime import gather, init_ray
from raymmi.run._select import select_features
from raymmi.run._tasks import TaskConfig, run_task, score_text
from raymmi.run._train import train
from raymmi.run._tune import tune

__all__ = [
    "TaskConfig",
    "evaluate_plates",
    "export",
    "gather",
    "generate_cells",
    "generate_images",
    "generate_plates",
    "ingest_cells",
    "ingest_images",
    "ingest_plates",
    "init_ray",
    "normalize",
    "preprocess_cells",
    "read_dataset",
    "run_task",
    "score_text",
    "select_features",
    "summary_text",
    "train",
    "tune",
]
