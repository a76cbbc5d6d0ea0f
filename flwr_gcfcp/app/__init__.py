"""The bundled demo Flower app (ClientApp/ServerApp, datasets, models, training, deployment helper).

Needs the ``app`` extra (torch, torchvision, flwr-datasets); the library in ``core``, ``methods`` and ``flower`` does not.
"""
