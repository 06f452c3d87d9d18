/*!
 * attribution.js - browser client of the attribution ingest API. No dependencies; serve it from the API
 * (/static/attribution.js) or copy the file next to your checkout.
 *
 *   <script src="https://ingest.example.com/static/attribution.js"></script>
 *   Attribution.consent.registerTag(() => { ...load GA4...; return () => { ...stop... }; });
 *   Attribution.consent.registerTag(() => { ...load the Meta Pixel... }, "marketing");
 *   await Attribution.consent.load();                    // notice version from the server
 *   if (Attribution.consent.needsDecision()) showModal(); // -> consent.acceptAll() / rejectAll() / set({...})
 *   await Attribution.submitLead({ full_name, email, phone });   // Step-1: POST /v1/leads
 *   const intent = await Attribution.createPaymentIntent();      // Step-2: POST /v1/payment-intents
 *   ...stripe.confirmCardPayment(intent.client_secret, ...)...; Attribution.completeCheckout();
 *
 * With marketing consent, the Meta Pixel (window.fbq, when the page loads it) gets Lead at submitLead() and
 * Purchase at completeCheckout() with the checkout's event_id as eventID: the server sends the same events to
 * the Conversions API with the same event_id, so Meta keeps one of each pair.
 *
 * The API is the origin this file is loaded from, unless the script tag says data-api-base="https://...".
 * Every call that reaches the API returns a promise; a refusal rejects with an Attribution.AttributionError
 * whose message is the server's message (status, code and field errors attached).
 */
(() => {
  "use strict";

  const PREFIX = "attribution.";
  const UTM_KEYS = ["utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term"];
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const MAX_TEXT = 200; // the API's limit for UTM values
  const MAX_URL = 2048; // the API's limit for landing_page / referrer
  const MAX_HELD_PUSHES = 100; // analytics pushes held while the visitor has not decided yet
  const PURPOSES = ["analytics", "marketing"];

  /** A call the API refused or could not answer; `message` is the server's own message when it sent one. */
  class AttributionError extends Error {
    constructor(message, { status = 0, code = "network_error", errors = [], retryAfter = null } = {}) {
      super(message);
      this.name = "AttributionError";
      this.status = status;
      this.code = code;
      this.errors = errors;
      this.retryAfter = retryAfter;
    }
  }

  /** A random (version 4) UUID from the platform's cryptographic generator, never Math.random. */
  function newUuid() {
    const crypto = globalThis.crypto;
    if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // randomUUID exists only in secure contexts (https, localhost); getRandomValues exists everywhere.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  const nowIso = () => new Date().toISOString();
  const clip = (value, limit) => (value == null ? null : String(value).slice(0, limit));

  /** JSON in Web Storage, falling back to memory where storage is blocked (some private modes, iframes). */
  function jsonStore(kind) {
    const memory = new Map();
    let backend = null;
    try {
      backend = window[kind];
      backend.setItem(PREFIX + "probe", "1");
      backend.removeItem(PREFIX + "probe");
    } catch (_blocked) {
      backend = null;
    }
    return {
      get(key) {
        let raw = memory.has(key) ? memory.get(key) : null;
        if (raw === null && backend) raw = backend.getItem(PREFIX + key);
        if (raw === null) return null;
        try {
          return JSON.parse(raw);
        } catch (_corrupt) {
          return null;
        }
      },
      set(key, value) {
        const raw = JSON.stringify(value);
        if (backend) {
          try {
            backend.setItem(PREFIX + key, raw);
            memory.delete(key);
            return;
          } catch (_full) {
            // quota exceeded: keep it for this page at least
          }
        }
        memory.set(key, raw);
      },
      remove(key) {
        memory.delete(key);
        if (backend) backend.removeItem(PREFIX + key);
      },
    };
  }

  /** The referrer, unless it is a page of this same site (internal navigation is not a traffic source). */
  function externalReferrer(referrer) {
    if (!referrer) return null;
    try {
      return new URL(referrer).origin === location.origin ? null : clip(referrer, MAX_URL);
    } catch (_invalid) {
      return null;
    }
  }

  /** The consent decision stored in localStorage, shared by every tab, sent to /v1/consent. */
  class ConsentManager {
    constructor(client) {
      this._client = client;
      this._store = jsonStore("localStorage");
      this._tags = [];
      this._held = [];
      this.version = null;
      this.required = true;
    }

    /** Fetch the notice version in force (once); resend a decision an earlier page could not deliver. */
    load() {
      if (!this._loading) {
        this._loading = this._client.config().then(
          (config) => {
            this.version = config.consent_version;
            this.required = config.require_consent;
            this._applyGating();
            const decision = this.current();
            if (decision && !decision.synced) this._send(decision).catch(() => {});
            return this.current();
          },
          (error) => {
            this._loading = null; // let a later call try again
            throw error;
          },
        );
      }
      return this._loading;
    }

    /** The visitor's decision for the notice version in force, or null (none yet, or an older notice). */
    current() {
      const decision = this._store.get("consent");
      if (!decision || this.version === null || decision.version !== this.version) return null;
      return decision;
    }

    /** True when the modal must be shown: no decision for the notice version in force. */
    needsDecision() {
      return this.current() === null;
    }

    /** Whether a purpose ("marketing" or "analytics") has consent now. */
    has(purpose) {
      const decision = this.current();
      return Boolean(decision && decision[purpose]);
    }

    /**
     * Record a decision: store it, start or stop gated tags, fire `consentUpdated` on window, POST /v1/consent.
     * Rejects when the server could not record it; the decision still applies here and is resent on load().
     */
    async set(choices, method = "modal") {
      if (this.version === null) await this.load();
      const decision = {
        marketing: Boolean(choices.marketing),
        analytics: Boolean(choices.analytics),
        method,
        version: this.version,
        decided_at: nowIso(),
        synced: false,
      };
      // The decision takes effect in this browser at once, whether or not the server can be reached.
      this._store.set("consent", decision);
      this._applyGating();
      window.dispatchEvent(new CustomEvent("consentUpdated", { detail: this._public(decision) }));
      await this._send(decision);
      return this._public(decision);
    }

    acceptAll(method = "modal") {
      return this.set({ marketing: true, analytics: true }, method);
    }

    rejectAll(method = "modal") {
      return this.set({ marketing: false, analytics: false }, method);
    }

    /**
     * Run `start` only while consent for `purpose` ("analytics", the default, or "marketing" for ad tags such as
     * the Meta Pixel) is in force: at once if it already is, else when it is given; at most once per grant. If
     * `start` returns a function, it is called when consent is withdrawn.
     * Returns a function that unregisters the tag (stopping it if running).
     */
    registerTag(start, purpose = "analytics") {
      if (typeof start !== "function") throw new TypeError("registerTag expects a function");
      if (!PURPOSES.includes(purpose)) throw new TypeError(`registerTag: purpose must be one of ${PURPOSES}`);
      const tag = { start, purpose, stop: null, running: false };
      this._tags.push(tag);
      if (this.has(purpose)) this._startTag(tag);
      return () => {
        this._tags = this._tags.filter((item) => item !== tag);
        if (tag.running) this._stopTag(tag);
      };
    }

    /**
     * A dataLayer push that only happens with analytics consent: held while the visitor has not decided,
     * dropped after a refusal or withdrawal. Returns true when pushed now.
     */
    push(item) {
      if (this.has("analytics")) {
        window.dataLayer = window.dataLayer || [];
        window.dataLayer.push(item);
        return true;
      }
      if (this.needsDecision() && this._held.length < MAX_HELD_PUSHES) this._held.push(item);
      return false;
    }

    /** gtag(...) through the gate: same arguments as Google's gtag(). */
    gtag() {
      return this.push(arguments); // gtag.js reads Arguments objects from the dataLayer, not arrays
    }

    _public(decision) {
      const { marketing, analytics, method, version, decided_at } = decision;
      return { marketing, analytics, method, version, decided_at };
    }

    async _send(decision) {
      const checkout = this._client.currentCheckout();
      await this._client.request("POST", "/v1/consent", {
        user_session_id: this._client.sessionId(),
        event_id: checkout ? checkout.event_id : null,
        marketing_consent: decision.marketing,
        analytics_consent: decision.analytics,
        consent_method: decision.method,
        consent_version: decision.version,
      });
      const stored = this._store.get("consent");
      if (stored && stored.decided_at === decision.decided_at) this._store.set("consent", { ...stored, synced: true });
    }

    _applyGating() {
      for (const tag of this._tags) {
        const allowed = this.has(tag.purpose);
        if (allowed && !tag.running) this._startTag(tag);
        if (!allowed && tag.running) this._stopTag(tag);
      }
      const on = this.has("analytics");
      if (on) {
        const held = this._held.splice(0);
        for (const item of held) this.push(item);
      } else if (!this.needsDecision()) {
        this._held.length = 0;
      }
    }

    _startTag(tag) {
      tag.running = true;
      try {
        const stop = tag.start();
        tag.stop = typeof stop === "function" ? stop : null;
      } catch (error) {
        console.error("attribution: a registered tag failed to start", error);
      }
    }

    _stopTag(tag) {
      tag.running = false;
      const stop = tag.stop;
      tag.stop = null;
      if (!stop) return;
      try {
        stop();
      } catch (error) {
        console.error("attribution: a registered tag failed to stop", error);
      }
    }
  }

  class AttributionClient {
    constructor(apiBase) {
      this.apiBase = apiBase.replace(/\/+$/, "");
      this._session = jsonStore("sessionStorage");
      this._config = null;
      this.consent = new ConsentManager(this);
      this.AttributionError = AttributionError;
    }

    /** Point the client at another API (e.g. when the file is copied rather than loaded from the API). */
    configure({ apiBase } = {}) {
      if (apiBase) {
        this.apiBase = apiBase.replace(/\/+$/, "");
        this._config = null;
      }
      return this;
    }

    /** GET /v1/client/config, once per page. */
    config() {
      if (!this._config) {
        this._config = this.request("GET", "/v1/client/config").catch((error) => {
          this._config = null;
          throw error;
        });
      }
      return this._config;
    }

    /** This tab's session id (sessionStorage): the same across pages and checkouts until the tab closes. */
    sessionId() {
      let id = this._session.get("user_session_id");
      if (typeof id !== "string" || !UUID_RE.test(id)) {
        id = newUuid();
        this._session.set("user_session_id", id);
      }
      return id;
    }

    /**
     * Remember where the visit came from: UTM parameters, landing page and outside referrer of the first page
     * of the session. A later page only replaces it when the first touch had no UTM and this page has.
     */
    recordTouch() {
      const params = new URLSearchParams(location.search);
      const utm = {};
      for (const key of UTM_KEYS) {
        const value = (params.get(key) || "").trim();
        if (value) utm[key] = clip(value, MAX_TEXT);
      }
      const hasUtm = Object.keys(utm).length > 0;
      const touch = this._session.get("first_touch");
      if (touch && (touch.has_utm || !hasUtm)) return touch;
      const next = {
        ...utm,
        has_utm: hasUtm,
        landing_page: clip(location.href, MAX_URL),
        referrer: externalReferrer(document.referrer) || (touch ? touch.referrer : null),
        first_seen_at: nowIso(),
      };
      this._session.set("first_touch", next);
      return next;
    }

    /** The first touch recorded in this session (UTMs, landing_page, referrer). */
    firstTouch() {
      return this._session.get("first_touch") || this.recordTouch();
    }

    /** The open checkout, or a new one with a fresh event_id (kept across reloads until completed). */
    startCheckout() {
      const open = this.currentCheckout();
      if (open) return open;
      const checkout = { event_id: newUuid(), checkout_started_at: nowIso(), lead_email: null };
      this._session.set("checkout", checkout);
      return checkout;
    }

    /** The open checkout ({event_id, checkout_started_at, lead_email}), or null. */
    currentCheckout() {
      const checkout = this._session.get("checkout");
      return checkout && typeof checkout.event_id === "string" && UUID_RE.test(checkout.event_id) ? checkout : null;
    }

    /**
     * Close the checkout after payment: the Pixel gets Purchase with its event_id (marketing consent only), and
     * the next startCheckout() gets a new event_id, same session.
     */
    completeCheckout() {
      const checkout = this.currentCheckout();
      if (checkout && checkout.lead_email && typeof checkout.amount === "number") {
        const params = { value: checkout.amount / 100, currency: String(checkout.currency || "").toUpperCase() };
        this.pixel("Purchase", params, checkout.event_id);
      }
      this._session.remove("checkout");
    }

    /** GA4's client id from the _ga cookie ("GA1.1.123.456" -> "123.456"), or null. */
    gaClientId() {
      const match = document.cookie.match(/(?:^|;\s*)_ga=([^;]+)/);
      if (!match) return null;
      const parts = decodeURIComponent(match[1]).split(".");
      return parts.length >= 4 ? parts.slice(-2).join(".") : null;
    }

    /**
     * Meta's browser ids for the Conversions API: _fbp, and _fbc or one built from the fbclid of the landing page
     * (Meta's `fb.1.<ms>.<fbclid>`). Only with marketing consent; otherwise both null.
     */
    metaBrowserIds() {
      if (!this.consent.has("marketing")) return { fbp: null, fbc: null };
      const cookie = (name) => {
        const match = document.cookie.match(new RegExp(`(?:^|;\\s*)${name}=([^;]+)`));
        return match ? clip(decodeURIComponent(match[1]), 500) : null;
      };
      let fbc = cookie("_fbc");
      if (!fbc) {
        const touch = this.firstTouch();
        let fbclid = null;
        try {
          fbclid = new URL(touch.landing_page).searchParams.get("fbclid");
        } catch (_invalid) {
          fbclid = null;
        }
        const seen = Date.parse(touch.first_seen_at) || Date.now();
        if (fbclid) fbc = clip(`fb.1.${seen}.${fbclid}`, 500);
      }
      return { fbp: cookie("_fbp"), fbc };
    }

    /**
     * fbq('track', name, params, {eventID}) with the checkout's event_id, the id the server sends to Meta's
     * Conversions API too: only with marketing consent and when the page loaded the Pixel. True when handed over.
     */
    pixel(name, params, eventId) {
      if (!this.consent.has("marketing") || typeof window.fbq !== "function" || !eventId) return false;
      try {
        window.fbq("track", name, params, { eventID: eventId });
      } catch (error) {
        console.error("attribution: the Meta Pixel failed", error);
        return false;
      }
      return true;
    }

    /** A dataLayer event through the analytics gate (see consent.push). */
    track(event, params = {}) {
      const checkout = this.currentCheckout();
      return this.consent.push(checkout ? { event, event_id: checkout.event_id, ...params } : { event, ...params });
    }

    /**
     * Step-1: POST /v1/leads with this checkout's event_id, the session, the first touch and the consent in
     * force. `options` may override marketing_consent / analytics_consent / consent_method (e.g. "checkbox").
     * Resolves to the server's answer.
     */
    async submitLead(fields, options = {}) {
      if (this.consent.version === null) await this.consent.load();
      let checkout = this.startCheckout();
      const email = String(fields.email || "").trim();
      if (checkout.lead_email && checkout.lead_email !== email) {
        // The lead of this checkout is stored with another email; the same event_id would be refused (409).
        this.completeCheckout();
        checkout = this.startCheckout();
      }
      const decision = this.consent.current();
      const touch = this.firstTouch();
      const analytics = options.analytics_consent ?? (decision ? decision.analytics : false);
      const marketing = options.marketing_consent ?? (decision ? decision.marketing : false);
      // Meta's browser ids identify the visitor for ads: sent only with marketing consent.
      const meta = marketing ? this.metaBrowserIds() : { fbp: null, fbc: null };
      const body = {
        event_id: checkout.event_id,
        user_session_id: this.sessionId(),
        full_name: fields.full_name,
        email,
        phone: fields.phone || null,
        landing_page: touch.landing_page,
        referrer: touch.referrer,
        // The GA client id identifies the visitor for analytics: sent only with analytics consent.
        ga_client_id: analytics ? this.gaClientId() : null,
        lead_created_at: nowIso(),
        checkout_started_at: checkout.checkout_started_at,
        fbp: meta.fbp,
        fbc: meta.fbc,
        marketing_consent: marketing,
        analytics_consent: analytics,
        // No decision yet means no consent was given; "implied" records that nothing was asked and answered.
        consent_method: options.consent_method || (decision ? decision.method : "implied"),
        consent_version: this.consent.version,
      };
      for (const key of UTM_KEYS) body[key] = touch[key] || null;
      const answer = await this.request("POST", "/v1/leads", body);
      this._session.set("checkout", { ...checkout, lead_email: email });
      if (marketing) this.pixel("Lead", {}, checkout.event_id);
      return answer;
    }

    /** Step-2: POST /v1/payment-intents for this checkout's lead; resolves to {client_secret, amount, ...}. */
    async createPaymentIntent() {
      const checkout = this.currentCheckout();
      if (!checkout || !checkout.lead_email) {
        throw new AttributionError("no lead in this checkout yet: call submitLead() first", {
          code: "no_lead",
        });
      }
      const intent = await this.request("POST", "/v1/payment-intents", { event_id: checkout.event_id });
      // Kept for the Pixel's Purchase at completeCheckout(): the amount the server charges, not the page's.
      this._session.set("checkout", { ...checkout, amount: intent.amount, currency: intent.currency });
      return intent;
    }

    /** One JSON call to the API; rejects with AttributionError carrying the server's message. */
    async request(method, path, body) {
      let response;
      try {
        response = await fetch(this.apiBase + path, {
          method,
          headers: body === undefined ? {} : { "Content-Type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
          credentials: "omit",
        });
      } catch (error) {
        throw new AttributionError(`could not reach the attribution API: ${error.message}`);
      }
      let payload = null;
      try {
        payload = await response.json();
      } catch (_notJson) {
        payload = null;
      }
      if (!response.ok) {
        const message = (payload && payload.message) || `the attribution API answered HTTP ${response.status}`;
        throw new AttributionError(message, {
          status: response.status,
          code: (payload && payload.error) || "http_error",
          errors: (payload && payload.errors) || [],
          retryAfter: response.headers.get("Retry-After"),
        });
      }
      return payload;
    }
  }

  function defaultApiBase() {
    const script = document.currentScript;
    if (script && script.dataset.apiBase) return script.dataset.apiBase;
    if (script && script.src) return new URL(script.src, location.href).origin;
    return location.origin;
  }

  const client = new AttributionClient(defaultApiBase());
  client.recordTouch();
  window.Attribution = client;
  // Learn the notice version now, so tags registered for a visitor who already decided start without a call.
  client.consent.load().catch((error) => console.warn("attribution: consent notice not loaded", error.message));
})();
