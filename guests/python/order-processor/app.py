"""`py-order-processor`: an event function in Python (world
`sluice:function/event-function`).

Takes `com.example.order.created` events whose data is JSON like
`{"items": [{"sku": "A1", "qty": 2, "price": 5.5}]}`, and replies with
`com.example.order.priced` carrying the order id, item count and total. It
counts the orders it has seen in its key-value bucket. Data that is not
such JSON fails permanently (the event is dead-lettered); other types too.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import atomics, wasi_keyvalue_store
from wit_world.imports.types import CloudEvent, HandlerError_Permanent


class Handler(exports.Handler):
    def handle(self, event: CloudEvent) -> list[CloudEvent]:
        if event.type != "com.example.order.created":
            raise Err(HandlerError_Permanent(f"cannot handle events of type {event.type}"))
        try:
            order = json.loads(event.data or b"")
            items = order["items"]
            total = sum(float(item["price"]) * int(item["qty"]) for item in items)
        except (ValueError, KeyError, TypeError) as error:
            raise Err(HandlerError_Permanent(f"not an order: {error!r}"))
        bucket = wasi_keyvalue_store.open("")
        seen = atomics.increment(bucket, "orders", 1)
        print(f"order {event.id}: {len(items)} items, total {total:.2f} (order #{seen})")
        reply = {"order": event.id, "items": len(items), "total": round(total, 2), "seen": seen}
        return [
            CloudEvent(
                id=f"{event.id}-priced",
                source="sluice/py-order-processor",
                specversion="1.0",
                type="com.example.order.priced",
                datacontenttype="application/json",
                dataschema=None,
                subject=event.subject,
                time=None,
                extensions=[],
                data=json.dumps(reply).encode(),
            )
        ]
