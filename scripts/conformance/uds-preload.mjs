// Loaded with `node --import` before the conformance suite: every HTTP
// request the suite makes goes to mcpsock's Unix socket instead of TCP.
//
// The suite talks HTTP three ways: the MCP SDK's fetch, undici's `request`,
// and node:http's `request`. All three are pointed at the socket named by
// MCPSOCK_CONFORMANCE_SOCKET; URLs keep `http://localhost/...`, so the Host
// header stays what a local client sends.
import http from 'node:http';
import { createRequire } from 'node:module';

const socketPath = process.env.MCPSOCK_CONFORMANCE_SOCKET;
const packageDir = process.env.MCPSOCK_CONFORMANCE_PACKAGE;
if (!socketPath || !packageDir) {
  throw new Error('set MCPSOCK_CONFORMANCE_SOCKET and MCPSOCK_CONFORMANCE_PACKAGE');
}

// The suite's own undici, so that `request` imported by the suite and the
// dispatcher set here are the same module instance.
const undici = createRequire(`${packageDir}/package.json`)('undici');
const agent = new undici.Agent({ connect: { socketPath } });
undici.setGlobalDispatcher(agent);
globalThis.fetch = (input, init = {}) => undici.fetch(input, { ...init, dispatcher: agent });

const request = http.request;
http.request = function (url, options, callback) {
  if (typeof url === 'object' && !(url instanceof URL)) {
    return request.call(this, { ...url, socketPath }, options);
  }
  if (typeof options === 'function' || options === undefined) {
    return request.call(this, url, { socketPath }, options);
  }
  return request.call(this, url, { ...options, socketPath }, callback);
};
