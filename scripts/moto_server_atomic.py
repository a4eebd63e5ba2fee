"""Starts the AWS emulator (moto_server) with DynamoDB operations made atomic.

moto applies a TransactWriteItems by deep-copying each table first and, when a condition
fails, putting the copy back. Under concurrent requests (the server is threaded) that rollback
also undoes writes other requests made in the meantime, and the copy can race with them:
lost updates and spurious 500s that real DynamoDB never produces. One lock around every
DynamoDB backend operation gives the emulator DynamoDB's isolation; SQS (long polls) and the
other services stay concurrent.

Arguments are moto_server's (`-H 127.0.0.1 -p PORT`).
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()


def _atomic(operation):
    @functools.wraps(operation)
    def locked(*args, **kwargs):
        with _LOCK:
            return operation(*args, **kwargs)

    return locked


for _name, _member in list(vars(DynamoDBBackend).items()):
    if not _name.startswith("_") and callable(_member):
        setattr(DynamoDBBackend, _name, _atomic(_member))

if __name__ == "__main__":
    sys.exit(main())
