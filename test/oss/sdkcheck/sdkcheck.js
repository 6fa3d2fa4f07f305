#!/usr/bin/env node
// Drives Aliyun's official Node.js SDK (ali-oss) against regmirror's OSS emulator, so the
// emulator's signature checks and wire format are measured against the official client.
//
//   node sdkcheck.js '{"port": 12345, "ak": "AK", "sk": "SK", "bucket": "sdk-bucket",
//                      "cname": "img.sdk.test", "vhostSuffix": "oss-test.localhost"}'
//
// Prints one JSON line per check ({"check", "ok", "detail"}) and a final summary line;
// exits 0 when every check passed. Every host name in the config is routed to 127.0.0.1 by a
// custom lookup on the HTTP agent, so no DNS and no Aliyun endpoint is involved.
'use strict';

const assert = require('assert');
const crypto = require('crypto');
const http = require('http');
const OSS = require('ali-oss');

const cfg = JSON.parse(process.argv[2] || '{}');
const PORT = cfg.port;
const AK = cfg.ak || 'AK';
const SK = cfg.sk || 'SK';
const BUCKET = cfg.bucket || 'sdk-bucket';
const REGION = cfg.region || 'oss-cn-hangzhou';
const CNAME = cfg.cname || 'img.sdk.test';
const VHOST = cfg.vhostSuffix || 'oss-test.localhost';
const ONLY = cfg.only ? new Set(cfg.only) : null;

// Route the emulator's names to loopback; everything else is refused (nothing leaves the box).
function loopbackLookup(hostname, options, cb) {
  if (typeof options === 'function') {
    cb = options;
    options = {};
  }
  const ours = hostname === CNAME || hostname === VHOST || hostname.endsWith(`.${VHOST}`) ||
    hostname === '127.0.0.1' || hostname === 'localhost';
  if (!ours) {
    const err = new Error(`sdkcheck: refusing to resolve ${hostname}`);
    err.code = 'ENOTFOUND';
    return process.nextTick(cb, err);
  }
  if (options && options.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }]);
  return process.nextTick(cb, null, '127.0.0.1', 4);
}
const agent = new http.Agent({ keepAlive: true, lookup: loopbackLookup });

// The three ways to reach the emulator, each with V1 and V4 signing.
function client(mode, v4, extra = {}) {
  const base = {
    accessKeyId: AK,
    accessKeySecret: SK,
    bucket: BUCKET,
    region: REGION,
    authorizationV4: v4,
    agent,
    timeout: 30000,
    ...extra
  };
  if (mode === 'ip') {
    // An IP endpoint: ali-oss connects to it and sends Host: <bucket>.<region>.aliyuncs.com.
    return new OSS({ ...base, endpoint: `http://127.0.0.1:${PORT}` });
  }
  if (mode === 'cname') {
    // The bucket's custom domain: Host is the domain itself, no bucket label.
    return new OSS({ ...base, endpoint: `http://${CNAME}:${PORT}`, cname: true });
  }
  // Default virtual-hosted style: Host <bucket>.<endpoint host>.
  return new OSS({ ...base, endpoint: `http://${VHOST}:${PORT}` });
}

function md5hex(buf) {
  return crypto.createHash('md5').update(buf).digest('hex').toUpperCase();
}

function randomBytes(n, seed) {
  // deterministic-enough content that differs per object
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

function fetchUrl(url, method = 'GET', body = null, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers }, res => {
      const chunks = [];
      res.on('data', c => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    if (body) req.end(body);
    else req.end();
  });
}

async function expectOssError(promise, code, status) {
  try {
    await promise;
  } catch (err) {
    assert.strictEqual(err.code, code, `expected ${code}, got ${err.code} (${err.status}): ${err.message}`);
    if (status) assert.strictEqual(err.status, status);
    return err;
  }
  throw new Error(`expected error ${code}, the call succeeded`);
}

const results = [];
async function check(name, fn) {
  if (ONLY && !ONLY.has(name.split(':')[0]) && !ONLY.has(name)) return;
  const t0 = Date.now();
  try {
    const detail = await fn();
    results.push({ check: name, ok: true, ms: Date.now() - t0, detail: detail || '' });
  } catch (err) {
    results.push({ check: name, ok: false, ms: Date.now() - t0, detail: `${err.name}: ${err.message}`, code: err.code, status: err.status });
  }
  process.stdout.write(`${JSON.stringify(results[results.length - 1])}\n`);
}

// ------------------------------------------------------------------------------------------

async function basicSuite(tag, c) {
  const p = `${tag}/`;
  const odd = `${p}dir one/file+plus (1)!*'~\u00e9.txt`;
  const data = randomBytes(4096 + tag.length, tag.length * 7919);

  await check(`${tag}:put-get-head`, async () => {
    const put = await c.put(odd, data, { meta: { origin: 'sdk' }, mime: 'application/x-test' });
    assert.strictEqual(put.res.status, 200);
    const etag = put.res.headers.etag;
    assert.strictEqual(etag, `"${md5hex(data)}"`, 'ETag is the upper-case hex MD5 in quotes');
    const got = await c.get(odd);
    assert.ok(Buffer.compare(got.content, data) === 0, 'GET returns the bytes PUT');
    const head = await c.head(odd);
    assert.strictEqual(head.status, 200);
    assert.strictEqual(head.meta.origin, 'sdk');
    assert.strictEqual(head.res.headers['content-type'], 'application/x-test');
    assert.strictEqual(Number(head.res.headers['content-length']), data.length);
    return etag;
  });

  await check(`${tag}:range`, async () => {
    const r = await c.get(odd, { headers: { Range: 'bytes=10-19' } });
    assert.strictEqual(r.res.status, 206);
    assert.ok(Buffer.compare(r.content, data.subarray(10, 20)) === 0);
    const tail = await c.get(odd, { headers: { Range: 'bytes=-5' } });
    assert.ok(Buffer.compare(tail.content, data.subarray(data.length - 5)) === 0);
    // OSS: an unsatisfiable range is ignored: 200 and the whole object
    const bad = await c.get(odd, { headers: { Range: `bytes=${data.length}-${data.length + 10}` } });
    assert.strictEqual(bad.res.status, 200);
    assert.ok(Buffer.compare(bad.content, data) === 0);
    // ... unless x-oss-range-behavior: standard
    await expectOssError(c.get(odd, { headers: { Range: `bytes=${data.length}-`, 'x-oss-range-behavior': 'standard' } }), 'InvalidRange', 416);
  });

  await check(`${tag}:missing`, async () => {
    await expectOssError(c.get(`${p}does-not-exist`), 'NoSuchKey', 404);
    await expectOssError(c.head(`${p}does-not-exist`), 'NoSuchKey', 404);
  });

  await check(`${tag}:copy`, async () => {
    const r = await c.copy(`${p}copy of file`, odd);
    assert.strictEqual(r.res.status, 200);
    assert.strictEqual(r.data.etag, `"${md5hex(data)}"`);
    const got = await c.get(`${p}copy of file`);
    assert.ok(Buffer.compare(got.content, data) === 0);
    const head = await c.head(`${p}copy of file`);
    assert.strictEqual(head.meta.origin, 'sdk', 'COPY directive keeps the metadata');
  });

  await check(`${tag}:delete`, async () => {
    await c.put(`${p}to-delete`, Buffer.from('x'));
    const r = await c.delete(`${p}to-delete`);
    assert.strictEqual(r.res.status, 204);
    await expectOssError(c.head(`${p}to-delete`), 'NoSuchKey', 404);
    const again = await c.delete(`${p}to-delete`);
    assert.strictEqual(again.res.status, 204, 'deleting a missing object is a 204');
  });
}

async function listSuite(tag, c) {
  const p = `${tag}/tree/`;
  const keys = [];
  for (const d of ['a', 'b', 'c']) for (let i = 0; i < 3; i++) keys.push(`${p}${d}/f${i}`);
  keys.push(`${p}top1`, `${p}top2`, `${p}top3`);
  await Promise.all(keys.map((k, i) => c.put(k, Buffer.from(`content ${i}`))));

  await check(`${tag}:list-v1`, async () => {
    const all = await c.list({ prefix: p, 'max-keys': 1000 });
    assert.deepStrictEqual(all.objects.map(o => o.name), [...keys].sort());
    assert.ok(all.objects.every(o => /^"[0-9A-F]{32}"$/.test(o.etag)), 'upper-case hex ETags');
    // delimiter + paging with marker: 3 prefixes + 3 objects, 2 per page
    const seenObj = [];
    const seenPre = [];
    let marker;
    let pages = 0;
    for (;;) {
      // (no `marker: ''` on the first page: with V4, ali-oss signs an empty-valued query
      // parameter as `marker=` where the documented rule, the Go SDK's published vectors and
      // this emulator use `marker`; see test/oss/README.md)
      const q = { prefix: p, delimiter: '/', 'max-keys': 2 };
      if (marker) q.marker = marker;
      const r = await c.list(q);
      pages++;
      (r.objects || []).forEach(o => seenObj.push(o.name));
      (r.prefixes || []).forEach(x => seenPre.push(x));
      if (!r.isTruncated) break;
      marker = r.nextMarker;
      assert.ok(pages < 10, 'paging terminates');
    }
    assert.deepStrictEqual(seenPre, [`${p}a/`, `${p}b/`, `${p}c/`]);
    assert.deepStrictEqual(seenObj, [`${p}top1`, `${p}top2`, `${p}top3`]);
    assert.strictEqual(pages, 3);
    return `${pages} pages`;
  });

  await check(`${tag}:list-v2`, async () => {
    const seenObj = [];
    const seenPre = [];
    let token;
    let pages = 0;
    for (;;) {
      const q = { prefix: p, delimiter: '/', 'max-keys': 2 };
      if (token) q['continuation-token'] = token;
      const r = await c.listV2(q);
      pages++;
      (r.objects || []).forEach(o => seenObj.push(o.name));
      (r.prefixes || []).forEach(x => seenPre.push(x));
      if (!r.isTruncated) break;
      token = r.nextContinuationToken;
      assert.ok(token, 'NextContinuationToken when truncated');
      assert.ok(pages < 10, 'paging terminates');
    }
    assert.deepStrictEqual(seenPre, [`${p}a/`, `${p}b/`, `${p}c/`]);
    assert.deepStrictEqual(seenObj, [`${p}top1`, `${p}top2`, `${p}top3`]);
    const sub = await c.listV2({ prefix: `${p}b/`, 'max-keys': 100 });
    assert.deepStrictEqual(sub.objects.map(o => o.name), [`${p}b/f0`, `${p}b/f1`, `${p}b/f2`]);
    assert.strictEqual(Number(sub.keyCount), 3);
    return `${pages} pages`;
  });

  await check(`${tag}:delete-multi`, async () => {
    const r = await c.deleteMulti(keys, { quiet: false });
    assert.strictEqual(r.res.status, 200);
    assert.strictEqual(r.deleted.length, keys.length);
    const quiet = await c.deleteMulti([`${p}never-existed`], { quiet: true });
    assert.strictEqual(quiet.res.status, 200);
    const after = await c.list({ prefix: p });
    assert.strictEqual((after.objects || []).length, 0);
  });
}

async function multipartSuite(tag, c) {
  const p = `${tag}/mp/`;
  const size = 3 * 100 * 1024 + 12345; // 4 parts of 100 KB (the minimum) + a short last part
  const data = randomBytes(size, 4242 + tag.length);

  await check(`${tag}:multipart-upload`, async () => {
    const r = await c.multipartUpload(`${p}big`, data, { partSize: 100 * 1024, parallel: 3 });
    assert.strictEqual(r.res.status, 200);
    const got = await c.get(`${p}big`);
    assert.ok(Buffer.compare(got.content, data) === 0, 'multipart object round-trips');
    // ETag: MD5 of the concatenated binary part MD5s, "-<parts>"
    const md5s = [];
    for (let off = 0; off < size; off += 100 * 1024) {
      md5s.push(crypto.createHash('md5').update(data.subarray(off, Math.min(off + 100 * 1024, size))).digest());
    }
    const want = `"${md5hex(Buffer.concat(md5s))}-${md5s.length}"`;
    assert.strictEqual(got.res.headers.etag, want);
    assert.strictEqual(got.res.headers['x-oss-object-type'], 'Multipart');
    return want;
  });

  await check(`${tag}:multipart-copy`, async () => {
    const r = await c.multipartUploadCopy(`${p}big-copy`, { sourceKey: `${p}big`, sourceBucketName: BUCKET }, { partSize: 100 * 1024 });
    assert.strictEqual(r.res.status, 200);
    const got = await c.get(`${p}big-copy`);
    assert.ok(Buffer.compare(got.content, data) === 0, 'UploadPartCopy result round-trips');
  });

  await check(`${tag}:multipart-manual`, async () => {
    const init = await c.initMultipartUpload(`${p}manual`);
    const { uploadId } = init;
    const part1 = data.subarray(0, 150 * 1024);
    const part2 = data.subarray(150 * 1024);
    const r1 = await c.uploadPart(`${p}manual`, uploadId, 1, part1, 0, part1.length);
    const r2 = await c.uploadPart(`${p}manual`, uploadId, 2, part2, 0, part2.length);
    assert.strictEqual(r1.etag, `"${md5hex(part1)}"`);
    const lp = await c.listParts(`${p}manual`, uploadId);
    assert.deepStrictEqual(lp.parts.map(x => Number(x.PartNumber)), [1, 2]);
    // a wrong ETag is an InvalidPart
    await expectOssError(c.completeMultipartUpload(`${p}manual`, uploadId, [{ number: 1, etag: r1.etag }, { number: 2, etag: '"00000000000000000000000000000000"' }]), 'InvalidPart', 400);
    const done = await c.completeMultipartUpload(`${p}manual`, uploadId, [{ number: 1, etag: r1.etag }, { number: 2, etag: r2.etag }]);
    assert.strictEqual(done.res.status, 200);
    const got = await c.get(`${p}manual`);
    assert.ok(Buffer.compare(got.content, data) === 0);
  });

  await check(`${tag}:multipart-too-small`, async () => {
    const { uploadId } = await c.initMultipartUpload(`${p}small`);
    const a = Buffer.from('part one is far below 100 KB');
    const b = Buffer.from('part two');
    const r1 = await c.uploadPart(`${p}small`, uploadId, 1, a, 0, a.length);
    const r2 = await c.uploadPart(`${p}small`, uploadId, 2, b, 0, b.length);
    await expectOssError(c.completeMultipartUpload(`${p}small`, uploadId, [{ number: 1, etag: r1.etag }, { number: 2, etag: r2.etag }]), 'EntityTooSmall', 400);
    await c.abortMultipartUpload(`${p}small`, uploadId);
  });

  await check(`${tag}:multipart-abort`, async () => {
    const { uploadId } = await c.initMultipartUpload(`${p}aborted`);
    const part = data.subarray(0, 1000);
    await c.uploadPart(`${p}aborted`, uploadId, 1, part, 0, part.length);
    const ups = await c.listUploads({ prefix: `${p}aborted` });
    assert.ok(ups.uploads.some(u => u.uploadId === uploadId), 'ListMultipartUploads shows the upload');
    const r = await c.abortMultipartUpload(`${p}aborted`, uploadId);
    assert.strictEqual(r.res.status, 204);
    await expectOssError(c.listParts(`${p}aborted`, uploadId), 'NoSuchUpload', 404);
    await expectOssError(c.head(`${p}aborted`), 'NoSuchKey', 404);
  });
}

async function signedUrlSuite(tag, c, v4) {
  const name = `${tag}/signed/obj ${v4 ? 'v4' : 'v1'}+x.bin`;
  const data = randomBytes(2000, 99 + tag.length);
  await c.put(name, data);

  await check(`${tag}:signed-url-get`, async () => {
    const url = v4 ? await c.signatureUrlV4('GET', 60, undefined, name) : c.signatureUrl(name, { expires: 60 });
    const r = await fetchUrl(url);
    assert.strictEqual(r.status, 200, r.body.toString());
    assert.ok(Buffer.compare(r.body, data) === 0);
    // tampering with the URL breaks the signature
    const r2 = await fetchUrl(url.replace(/obj(%20| )/, 'obx$1'));
    assert.strictEqual(r2.status, 403);
    assert.ok(r2.body.toString().includes('<Code>SignatureDoesNotMatch</Code>'), r2.body.toString());
    return url.replace(/(Signature|x-oss-signature)=[^&]*/, '$1=...');
  });

  await check(`${tag}:signed-url-put`, async () => {
    const body = Buffer.from(`uploaded through a ${v4 ? 'V4' : 'V1'} signed URL`);
    const target = `${name}.put`;
    let url;
    if (v4) {
      url = await c.signatureUrlV4('PUT', 60, { headers: { 'Content-Type': 'text/plain' } }, target);
    } else {
      url = c.signatureUrl(target, { method: 'PUT', 'Content-Type': 'text/plain', expires: 60 });
    }
    const r = await fetchUrl(url, 'PUT', body, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
    assert.strictEqual(r.status, 200, r.body.toString());
    const got = await c.get(target);
    assert.ok(Buffer.compare(got.content, body) === 0);
  });

  await check(`${tag}:signed-url-expired`, async () => {
    let url;
    if (v4) {
      url = await c.signatureUrlV4('GET', 1, undefined, name);
      await new Promise(r => setTimeout(r, 1100));
    } else {
      url = c.signatureUrl(name, { expires: -5 });
    }
    const r = await fetchUrl(url);
    assert.strictEqual(r.status, 403);
    assert.ok(/<Code>AccessDenied<\/Code>/.test(r.body.toString()) && /expired/i.test(r.body.toString()), r.body.toString());
  });
}

async function negativeSuite(tag, mode, v4) {
  const bad = client(mode, v4, { accessKeySecret: `${SK}-wrong` });
  await check(`${tag}:wrong-secret`, async () => {
    const err = await expectOssError(bad.put(`${tag}/never`, Buffer.from('x')), 'SignatureDoesNotMatch', 403);
    assert.ok(err.requestId, 'the SDK surfaces the RequestId');
    await expectOssError(bad.get(`${tag}/never`), 'SignatureDoesNotMatch', 403);
    await expectOssError(bad.list({ prefix: `${tag}/never/` }), 'SignatureDoesNotMatch', 403);
    return err.message;
  });
  const badAk = client(mode, v4, { accessKeyId: `${AK}X` });
  await check(`${tag}:wrong-ak`, async () => {
    await expectOssError(badAk.put(`${tag}/never`, Buffer.from('x')), 'InvalidAccessKeyId', 403);
  });
}

async function main() {
  const modes = cfg.modes || ['ip-v1', 'ip-v4', 'cname-v1', 'cname-v4', 'vhost-v1', 'vhost-v4'];
  for (const m of modes) {
    const [mode, sig] = m.split('-');
    const v4 = sig === 'v4';
    const c = client(mode, v4);
    await basicSuite(m, c);
    await listSuite(m, c);
    if (!cfg.quick || m === 'ip-v1' || m === 'vhost-v4') await multipartSuite(m, c);
    if (mode !== 'ip') await signedUrlSuite(m, c, v4);
    await negativeSuite(m, mode, v4);
  }
  const failed = results.filter(r => !r.ok);
  process.stdout.write(`${JSON.stringify({ summary: true, ali_oss: require('ali-oss/package.json').version, total: results.length, failed: failed.length })}\n`);
  agent.destroy();
  process.exitCode = failed.length ? 1 : 0;
}

main().catch(err => {
  process.stdout.write(`${JSON.stringify({ summary: true, fatal: `${err.stack}` })}\n`);
  process.exitCode = 2;
});
