// A node-opcua server that only offers Basic256Sha256 / SignAndEncrypt with a user name and
// password, under its own self-signed certificate (node-opcua puts DNS names first in the
// subject alternative names, the application URI after them): ns=1;s=Secure.Counter (UInt32,
// +1 every 100 ms) and ns=1;s=Secure.Setpoint (Double, writable).
// Usage: node secure_server.js PORT PKI_DIR USER PASSWORD
// Prints "ready" once listening, "written <value>" for each write of the setpoint, and
// "certificate <hex DER>" of its own certificate. Stops on SIGTERM/SIGINT.
"use strict";
const path = require("path");
const fs = require("fs");
const {
  OPCUAServer, OPCUACertificateManager, DataType, Variant, StatusCodes, SecurityPolicy,
  MessageSecurityMode,
} = require("node-opcua");

async function main() {
  const [portText, pkiDir, user, password] = process.argv.slice(2);
  const port = Number(portText);
  fs.mkdirSync(pkiDir, { recursive: true });
  const serverCertificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pkiDir, "server"),
    automaticallyAcceptUnknownCertificate: true,
  });
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    alternateHostname: ["127.0.0.1"],
    serverCertificateManager,
    securityPolicies: [SecurityPolicy.Basic256Sha256],
    securityModes: [MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: false,
    userManager: {
      isValidUser: (name, pass) => name === user && pass === password,
    },
  });
  await server.initialize();
  const ns = server.engine.addressSpace.getOwnNamespace();
  const folder = ns.addFolder(server.engine.addressSpace.rootFolder.objects, {
    browseName: "Secure",
    nodeId: "s=Secure",
  });
  const counter = ns.addVariable({
    componentOf: folder,
    browseName: "Secure.Counter",
    nodeId: "s=Secure.Counter",
    dataType: "UInt32",
    minimumSamplingInterval: 0,
    value: { dataType: DataType.UInt32, value: 0 },
  });
  let setpoint = 0;
  ns.addVariable({
    componentOf: folder,
    browseName: "Secure.Setpoint",
    nodeId: "s=Secure.Setpoint",
    dataType: "Double",
    accessLevel: "CurrentRead | CurrentWrite",
    userAccessLevel: "CurrentRead | CurrentWrite",
    value: {
      get: () => new Variant({ dataType: DataType.Double, value: setpoint }),
      set: (v) => {
        setpoint = v.value;
        process.stdout.write(`written ${setpoint}\n`);
        return StatusCodes.Good;
      },
    },
  });
  await server.start();
  const der = server.getCertificate();
  process.stdout.write(`certificate ${Buffer.from(der).toString("hex")}\n`);
  process.stdout.write("ready\n");
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    counter.setValueFromSource({ dataType: DataType.UInt32, value: ticks });
  }, 100);
  const stop = async () => {
    clearInterval(timer);
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`secure_server: ${e.stack || e}\n`);
  process.exit(1);
});
