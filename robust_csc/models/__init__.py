"""The model zoo: ResNet baselines and SDNet (CSC) networks."""

from robust_csc.models.registry import create_model, list_models, model_arguments, register_model
from robust_csc.models.resnet import BasicBlock, Normalize, ResNet

__all__ = ["create_model", "list_models", "model_arguments", "register_model", "BasicBlock", "Normalize", "ResNet"]
