// The second client of the busy-server test: subscribes to the ITEMS counters of
// busy_server.js like the connector does (publishing 500 ms, sampling 0, queue 12) and counts
// what it received, the values missing between consecutive counter values, and values with
// the Overflow bit. Usage: node busy_client.js ENDPOINT ITEMS
// Prints "subscribed" once its items exist and, on SIGTERM/SIGINT, one JSON line
// {"received":N,"lost":N,"overflows":N} before it exits.
"use strict";
const {
  OPCUAClient,
  AttributeIds,
  TimestampsToReturn,
  ClientMonitoredItemGroup,
  MessageSecurityMode,
  SecurityPolicy,
} = require("node-opcua");

async function main() {
  const [endpoint, itemsArg] = process.argv.slice(2);
  const items = Number(itemsArg);
  const client = OPCUAClient.create({
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 3, initialDelay: 200 },
  });
  await client.connect(endpoint);
  const session = await client.createSession();
  const subscription = await session.createSubscription2({
    requestedPublishingInterval: 500,
    requestedLifetimeCount: 120,
    requestedMaxKeepAliveCount: 10,
    maxNotificationsPerPublish: 0,
    publishingEnabled: true,
    priority: 0,
  });
  const last = new Array(items).fill(-1);
  let received = 0;
  let lost = 0;
  let overflows = 0;
  const toMonitor = [];
  for (let i = 0; i < items; i++) {
    toMonitor.push({ nodeId: `ns=1;s=Busy.${i}`, attributeId: AttributeIds.Value });
  }
  const group = await ClientMonitoredItemGroup.create(
    subscription,
    toMonitor,
    { samplingInterval: 0, queueSize: 12, discardOldest: true },
    TimestampsToReturn.Both
  );
  group.on("changed", (item, dataValue, index) => {
    received += 1;
    const v = dataValue.value.value;
    if (dataValue.statusCode.hasOverflowBit) overflows += 1;
    if (last[index] >= 0 && v > last[index] + 1) lost += v - last[index] - 1;
    last[index] = v;
  });
  process.stdout.write("subscribed\n");
  const stop = async () => {
    process.stdout.write(JSON.stringify({ received, lost, overflows }) + "\n");
    try {
      await subscription.terminate();
      await session.close();
      await client.disconnect();
    } finally {
      process.exit(0);
    }
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`busy_client: ${e.stack || e}\n`);
  process.exit(1);
});
