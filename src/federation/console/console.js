// kexin console: signs in and signs actions with the member's own key, in
// this browser. The key file is read once, at sign-in, and kept as a
// non-extractable WebCrypto key in this origin's IndexedDB until sign-out;
// it never leaves the browser. Every signature is over exactly the bytes
// the node rendered (`tag ‖ 0x00 ‖ body`), so what is signed is what the
// page shows. Served by the node under a Content-Security-Policy that
// allows no other script.
"use strict";

const DB = "kexin-console";

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function db() {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore("keys");
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

async function keep(member, key) {
  const d = await db();
  await new Promise((resolve, reject) => {
    const t = d.transaction("keys", "readwrite");
    t.objectStore("keys").put(key, member);
    t.oncomplete = resolve;
    t.onerror = () => reject(t.error);
  });
}

async function kept(member) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const r = d.transaction("keys").objectStore("keys").get(member);
    r.onsuccess = () => resolve(r.result || null);
    r.onerror = () => reject(r.error);
  });
}

async function forget() {
  const d = await db();
  await new Promise((resolve) => {
    const t = d.transaction("keys", "readwrite");
    t.objectStore("keys").clear();
    t.oncomplete = resolve;
    t.onerror = resolve;
  });
}

// A kexin key file ({"kexin_key":1,"member":…,"seed":hex}) as a
// non-extractable Ed25519 signing key: PKCS#8 is a fixed prefix and the seed.
async function importKeyFile(text) {
  const kf = JSON.parse(text);
  if (kf.kexin_key !== 1 || typeof kf.seed !== "string" || kf.seed.length !== 64) {
    throw new Error("not a kexin key file");
  }
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(fromHex("302e020100300506032b657004220420"), 0);
  pkcs8.set(fromHex(kf.seed), 16);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  return { member: kf.member, key };
}

async function sign(key, tag, bodyText) {
  const enc = new TextEncoder();
  const t = enc.encode(tag), b = enc.encode(bodyText);
  const msg = new Uint8Array(t.length + 1 + b.length);
  msg.set(t, 0);
  msg.set(b, t.length + 1);
  return hex(await crypto.subtle.sign({ name: "Ed25519" }, key, msg));
}

function nowUtc() {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

function nonce() {
  return hex(crypto.getRandomValues(new Uint8Array(16)));
}

function fail(form, text) {
  const out = form.querySelector("[data-error]");
  if (out) {
    out.textContent = text;
    out.hidden = false;
  }
}

// Sign-in: the signed request the API takes, for POST /console/login.
function signIn(form) {
  form.addEventListener("submit", async (ev) => {
    if (form.elements.proof.value) return; // a pasted `kexin id login` token
    ev.preventDefault();
    try {
      const file = form.elements.keyfile.files[0];
      if (!file) throw new Error(form.dataset.noFile);
      const { member, key } = await importKeyFile(await file.text());
      if (member !== form.elements.member.value.trim()) throw new Error(form.dataset.otherMember);
      const empty = await crypto.subtle.digest("SHA-256", new Uint8Array(0));
      const body = {
        space: form.dataset.space,
        node: form.dataset.node,
        member,
        method: "POST",
        target: "/console/login",
        body_sha256: hex(empty),
        nonce: nonce(),
        time: nowUtc(),
      };
      const signature = await sign(key, "kexin/request/v1", JSON.stringify(body));
      form.elements.proof.value = b64url(new TextEncoder().encode(JSON.stringify({ body, signature })));
      await keep(member, key);
      form.submit();
    } catch (e) {
      fail(form, String(e.message || e));
    }
  });
}

// An action: sign the body the node rendered with the key kept at sign-in.
function signAction(form) {
  form.addEventListener("submit", async (ev) => {
    if (form.elements.signature.value) return;
    ev.preventDefault();
    try {
      const key = await kept(form.dataset.member);
      if (!key) throw new Error(form.dataset.noKey);
      form.elements.signature.value = await sign(key, form.elements.tag.value, form.elements.body.value);
      form.submit();
    } catch (e) {
      fail(form, String(e.message || e));
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-sign-in]").forEach(signIn);
  document.querySelectorAll("form[data-sign]").forEach(signAction);
  document.querySelectorAll("form[data-sign-out]").forEach((f) =>
    f.addEventListener("submit", () => { forget(); })
  );
});
