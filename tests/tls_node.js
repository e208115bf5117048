// Independent wss:// client for codara-agent (issue 14), with Node's `https` and the `ws`
// package that main servers use: connects over wss:// trusting only CAFILE, submits a task
// over HTTPS, and checks that every byte of its output and its `completed` arrive.
//
// Usage: node tests/tls_node.js PORT SECRET CAFILE   (NODE_PATH must reach the `ws` package;
// scripts/test.sh installs it under target/test-node). Prints "OK node" and exits 0 on
// success; exits 1 on a failed check, 3 if `ws` is missing. Loopback only, bounded.
'use strict';
const fs = require('fs');
const https = require('https');
let WebSocket;
try {
  WebSocket = require('ws');
} catch (e) {
  console.log(`MISSING: the npm package ws is not installed (${e.message})`);
  process.exit(3);
}

const [port, secret, cafile] = process.argv.slice(2);
const ca = fs.readFileSync(cafile);
const fail = (why) => {
  console.log(`FAIL node: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('no completed within 60 s'), 60000).unref();

const ws = new WebSocket(`wss://localhost:${port}/`, { ca, headers: { 'X-Cluster-Secret': secret } });
let taskId = null;
const early = [];
const chunks = [];
const onEvent = (u) => {
  if (u.taskId !== taskId) return;
  if (u.event === 'output') {
    const have = chunks.reduce((n, c) => n + Buffer.byteLength(c), 0);
    if (u.offset !== have) fail(`offset ${u.offset}, expected ${have}`);
    chunks.push(u.data);
  }
  if (u.event === 'completed') {
    const want = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join('');
    if (chunks.join('') !== want) fail(`output differs: ${chunks.join('').length} chars, want ${want.length}`);
    if (u.data.exitCode !== 0) fail(`exit ${u.data.exitCode}`);
    console.log('OK node');
    ws.close();
    process.exit(0);
  }
};
ws.on('error', (e) => fail(`wss error: ${e.message}`));
ws.on('message', (data) => {
  const u = JSON.parse(data);
  if (taskId === null) early.push(u);
  else onEvent(u);
});
ws.on('open', () => {
  const body = JSON.stringify({ command: 'seq', args: ['1', '20000'] });
  const rq = https.request(
    { host: 'localhost', port, path: '/execute', method: 'POST', ca,
      headers: { 'X-Cluster-Secret': secret, 'Content-Type': 'application/json', 'Content-Length': body.length } },
    (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        if (res.statusCode !== 200) fail(`execute: ${res.statusCode} ${text}`);
        taskId = JSON.parse(text).taskId;
        early.splice(0).forEach(onEvent);
      });
    },
  );
  rq.on('error', (e) => fail(`https error: ${e.message}`));
  rq.end(body);
});
