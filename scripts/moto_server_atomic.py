"""Starts the AWS emulator (moto_server) with DynamoDB operations made atomic and cheap.

moto applies a TransactWriteItems by deep-copying each table first and, when a condition
fails, putting the copy back. Under concurrent requests (the server is threaded) that rollback
also undoes writes other requests made in the meantime, and the copy can race with them:
lost updates and spurious 500s that real DynamoDB never produces. One lock around every
DynamoDB backend operation gives the emulator DynamoDB's isolation; SQS (long polls) and the
other services stay concurrent.

The copy also makes every transaction cost the whole table (a re-encryption of a few thousand
data keys ran at 28 keys/s). Under the lock a transaction can instead check every condition
first and write only when all hold, keeping copies of just the items it writes to put back if
a write itself fails: the same outcome, at the cost of the transaction's own items.

Arguments are moto_server's (`-H 127.0.0.1 -p PORT`).
"""

import copy
import functools
import sys
import threading

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()
_OPERATIONS = ("ConditionCheck", "Put", "Delete", "Update")


def _atomic(operation):
    @functools.wraps(operation)
    def locked(*args, **kwargs):
        with _LOCK:
            return operation(*args, **kwargs)

    return locked


def _item_key(backend, op_type, op):
    """The table, and the stored (hash, range) key of the item an operation names."""
    table = backend.get_table(op["TableName"])
    if op_type == "Put":
        attrs = op["Item"]
        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = attrs[table.range_key_attr]
    else:
        key = op["Key"]
    return table, key


def _check(backend, op_type, op, key):
    """The cancellation reason of one operation's condition, or None when it holds."""
    if op_type not in _OPERATIONS:
        raise ValueError("Unsupported transaction operation")
    condition = op.get("ConditionExpression")
    if condition is None:
        return None
    current = backend.get_item(op["TableName"], key)
    holds = get_filter_expression(
        condition,
        op.get("ExpressionAttributeNames"),
        op.get("ExpressionAttributeValues"),
    ).expr(current)
    if holds:
        return None
    item = None
    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
        item = current.to_json()["Attributes"]
    return ("ConditionalCheckFailed", "The conditional request failed", item)


def _apply(backend, op_type, op, key):
    names = op.get("ExpressionAttributeNames")
    values = op.get("ExpressionAttributeValues")
    if op_type == "Put":
        backend.put_item(
            op["TableName"],
            op["Item"],
            expression_attribute_names=names,
            expression_attribute_values=values,
        )
    elif op_type == "Delete":
        backend.delete_item(
            op["TableName"],
            key,
            expression_attribute_names=names,
            expression_attribute_values=values,
        )
    elif op_type == "Update":
        backend.update_item(
            op["TableName"],
            key,
            update_expression=op["UpdateExpression"],
            expression_attribute_names=names,
            expression_attribute_values=values,
        )


def transact_write_items(self, transact_items):
    """TransactWriteItems in two phases: every condition, then (only if all hold) every write."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    plan, seen, reasons = [], set(), []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        table, key = _item_key(self, op_type, op)
        identity = (op["TableName"], str(dict(sorted(key.items()))))
        if identity in seen:
            raise MultipleTransactionsException()
        seen.add(identity)
        try:
            reasons.append(_check(self, op_type, op, key))
        except MockValidationException:
            raise
        except Exception as e:  # noqa: BLE001 - reported as the item's reason, as moto does
            reasons.append((type(e).__name__, str(e), None))
        plan.append((table, op_type, op, key))
    if any(reasons):
        raise TransactionCanceledException(
            [r if r else (None, None, None) for r in reasons]
        )
    saved = []
    for table, _, _, key in plan:
        hash_key, range_key = self.get_keys_value(table, key)
        saved.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    try:
        for _, op_type, op, key in plan:
            _apply(self, op_type, op, key)
    except Exception:
        for table, hash_key, range_key, item in reversed(saved):
            _restore(table, hash_key, range_key, item)
        raise


def _restore(table, hash_key, range_key, item):
    if table.has_range_key:
        rows = table.items[hash_key]
        if item is None:
            rows.pop(range_key, None)
        else:
            rows[range_key] = item
    elif item is None:
        table.items.pop(hash_key, None)
    else:
        table.items[hash_key] = item


DynamoDBBackend.transact_write_items = transact_write_items
for _name, _member in list(vars(DynamoDBBackend).items()):
    if not _name.startswith("_") and callable(_member):
        setattr(DynamoDBBackend, _name, _atomic(_member))

if __name__ == "__main__":
    sys.exit(main())
