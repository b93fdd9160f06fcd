// `js-order-processor`: an event function in JavaScript (world
// `sluice:function/event-function`).
//
// Takes `com.example.order.created` events whose data is JSON like
// `{"items": [{"sku": "A1", "qty": 2, "price": 5.5}]}`, and replies with
// `com.example.order.priced` carrying the order id, item count and total. It
// counts the orders it has seen in its key-value bucket. Data that is not
// such JSON fails permanently (the event is dead-lettered); other types too.
import { open } from "wasi:keyvalue/store@0.2.0-draft";
import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// A thrown value becomes the `handler-error` of the result: a variant.
function permanent(reason) {
  return { tag: "permanent", val: reason };
}

export const handler = {
  handle(event) {
    if (event.type !== "com.example.order.created") {
      throw permanent(`cannot handle events of type ${event.type}`);
    }
    let items;
    let total = 0;
    try {
      const order = JSON.parse(decoder.decode(event.data ?? new Uint8Array()));
      items = order.items;
      for (const item of items) {
        const line = Number(item.price) * Number(item.qty);
        if (!Number.isFinite(line)) throw new Error(`bad item ${JSON.stringify(item)}`);
        total += line;
      }
    } catch (error) {
      throw permanent(`not an order: ${error}`);
    }
    const seen = increment(open(""), "orders", 1n);
    console.log(`order ${event.id}: ${items.length} items, total ${total.toFixed(2)} (order #${seen})`);
    const reply = { order: event.id, items: items.length, total: Math.round(total * 100) / 100, seen: Number(seen) };
    return [
      {
        id: `${event.id}-priced`,
        source: "sluice/js-order-processor",
        specversion: "1.0",
        type: "com.example.order.priced",
        datacontenttype: "application/json",
        dataschema: undefined,
        subject: event.subject,
        time: undefined,
        extensions: [],
        data: encoder.encode(JSON.stringify(reply)),
      },
    ];
  },
};
