// One MQTT.js client for test_mqttjs.py: connects over TLS (mqtts://HOST:PORT), subscribes to
// TOPIC at QoS 1, publishes PAYLOAD to it at QoS 1 and waits for it to come back, then prints one
// JSON line {"protocol": <negotiated TLS version>, "granted": <SUBACK codes>, "received": <payload>}
// and exits 0; on an error or after 10 s it prints {"error": ...} and exits 1.
//
// Usage: node mqttjs_client.js '{"host":..,"port":..,"ca":..,"cert":..,"key":..,
//                                "tls":"TLSv1.2"|"TLSv1.3","topic":..,"payload":..}'
// (cert and key optional). Run with NODE_PATH pointing to the node_modules holding `mqtt`.
"use strict";

const fs = require("fs");
const mqtt = require("mqtt");

const args = JSON.parse(process.argv[2]);

function finish(code, result) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

const options = {
  protocolVersion: 4,
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  ca: fs.readFileSync(args.ca),
  rejectUnauthorized: true,
  minVersion: args.tls,
  maxVersion: args.tls,
};
if (args.cert) {
  options.cert = fs.readFileSync(args.cert);
  options.key = fs.readFileSync(args.key);
}

setTimeout(() => finish(1, { error: "timeout after 10 s" }), 10000).unref();

const client = mqtt.connect(`mqtts://${args.host}:${args.port}`, options);
client.on("error", (e) => finish(1, { error: String(e) }));
client.on("close", () => finish(1, { error: "connection closed" }));
client.on("connect", () => {
  const protocol = client.stream.getProtocol();
  client.subscribe(args.topic, { qos: 1 }, (err, granted) => {
    if (err) return finish(1, { error: `subscribe: ${err}` });
    client.on("message", (_topic, payload) => {
      client.removeAllListeners("close");
      client.end(false, () =>
        finish(0, {
          protocol,
          granted: granted.map((g) => g.qos),
          received: payload.toString(),
        }),
      );
    });
    client.publish(args.topic, args.payload, { qos: 1 }, (err2) => {
      if (err2) finish(1, { error: `publish: ${err2}` });
    });
  });
});
