// A busy OPC UA server for the busy-server test: ITEMS UInt32 counters under
// ns=1;s=Busy.<i>, all incremented together RATE/ITEMS times a second (RATE values/s in all).
// Usage: node busy_server.js PORT ITEMS RATE
// Prints "ready" once listening and, every second, "ticks N late L" (L: ticks that ran more
// than one period late, i.e. the server did not sustain the rate). Stops on SIGTERM/SIGINT.
"use strict";
const { OPCUAServer, DataType, Variant, StatusCodes, DataValue } = require("node-opcua");

async function main() {
  const [port, items, rate, perSub] = process.argv.slice(2).map(Number);
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    alternateHostname: ["127.0.0.1"],
    serverCapabilities: {
      maxSessions: 10,
      // 0: a sampling interval of 0 gets every change (otherwise changes are coalesced over
      // this window, and a value that changed twice in it is lost without an Overflow bit).
      minSupportedSampleRate: 0,
      ...(perSub ? { maxMonitoredItemsPerSubscription: perSub } : {}),
      operationLimits: { maxMonitoredItemsPerCall: 10000, maxNodesPerRead: 10000 },
    },
  });
  await server.initialize();
  const ns = server.engine.addressSpace.getOwnNamespace();
  const folder = ns.addFolder(server.engine.addressSpace.rootFolder.objects, {
    browseName: "Busy",
    nodeId: "s=Busy",
  });
  const vars = [];
  for (let i = 0; i < items; i++) {
    vars.push(
      ns.addVariable({
        componentOf: folder,
        browseName: `Busy.${i}`,
        nodeId: `s=Busy.${i}`,
        dataType: "UInt32",
        minimumSamplingInterval: 0,
        value: { dataType: DataType.UInt32, value: 0 },
      })
    );
  }
  await server.start();
  process.stdout.write("ready\n");

  const perSecond = rate / items;
  const period = 1000 / perSecond;
  let ticks = 0;
  let late = 0;
  const started = Date.now();
  const tick = () => {
    ticks += 1;
    const now = new Date();
    for (const v of vars) {
      v.setValueFromSource(
        { dataType: DataType.UInt32, value: ticks },
        StatusCodes.Good,
        now
      );
    }
    const next = started + (ticks + 1) * period;
    const wait = next - Date.now();
    if (wait < -period) late += 1;
    timer = setTimeout(tick, Math.max(0, wait));
  };
  let timer = setTimeout(tick, period);
  const report = setInterval(() => process.stdout.write(`ticks ${ticks} late ${late}\n`), 1000);
  const stop = async () => {
    clearTimeout(timer);
    clearInterval(report);
    process.stdout.write(`final ticks ${ticks} late ${late}\n`);
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`busy_server: ${e.stack || e}\n`);
  process.exit(1);
});
