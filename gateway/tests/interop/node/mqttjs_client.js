// One MQTT.js client for test_mqttjs.py: connects over TLS (mqtts://HOST:PORT) or to `url`
// (ws:// or wss://), subscribes to TOPIC at QOS (default 1), publishes PAYLOAD to it at that QoS
// and waits for it to come back, then prints one JSON line {"protocol": <negotiated TLS version,
// or null over a WebSocket>, "granted": <SUBACK codes>, "received": <payload>} and exits 0; on an error
// or after 10 s it prints {"error": ...} and exits 1.
//
// Usage: node mqttjs_client.js '{"host":..,"port":..,"ca":..,"cert":..,"key":..,
//                                "tls":"TLSv1.2"|"TLSv1.3","topic":..,"payload":..}'
//        node mqttjs_client.js '{"url":"wss://HOST:PORT/PATH","ca":..,"mqtt":4|5,"qos":0|1|2,
//                                "topic":..,"payload":..}'
// (cert, key, tls, mqtt and qos optional). Run with NODE_PATH pointing to the node_modules
// holding `mqtt`.
"use strict";

const fs = require("fs");
const mqtt = require("mqtt");

const args = JSON.parse(process.argv[2]);

function finish(code, result) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

const qos = args.qos === undefined ? 1 : args.qos;
const options = {
  protocolVersion: args.mqtt || 4,
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  rejectUnauthorized: true,
};
if (args.ca) options.ca = fs.readFileSync(args.ca);
if (args.tls) {
  options.minVersion = args.tls;
  options.maxVersion = args.tls;
}
if (args.cert) {
  options.cert = fs.readFileSync(args.cert);
  options.key = fs.readFileSync(args.key);
}

setTimeout(() => finish(1, { error: "timeout after 10 s" }), 10000).unref();

const client = mqtt.connect(args.url || `mqtts://${args.host}:${args.port}`, options);
// Once the message is in, the result stands: MQTT.js may still be writing its PUBACK/PUBREC when
// `end` has the gateway close the connection (seen as EPIPE over WebSocket).
let result = null;
client.on("error", (e) => (result ? finish(0, result) : finish(1, { error: String(e) })));
client.on("close", () => (result ? finish(0, result) : finish(1, { error: "connection closed" })));
client.on("connect", () => {
  const protocol = client.stream.getProtocol ? client.stream.getProtocol() : null;
  client.subscribe(args.topic, { qos }, (err, granted) => {
    if (err) return finish(1, { error: `subscribe: ${err}` });
    client.on("message", (_topic, payload) => {
      result = {
        protocol,
        granted: granted.map((g) => g.qos),
        received: payload.toString(),
      };
      client.end(false, () => finish(0, result));
    });
    client.publish(args.topic, args.payload, { qos }, (err2) => {
      if (err2) finish(1, { error: `publish: ${err2}` });
    });
  });
});
