/*
 * The demo checkout: consent modal, Step-1 lead, Step-2 card payment with Stripe.js, thank-you.
 * Everything attribution-related goes through window.Attribution (/static/attribution.js), as it would on a
 * shop's own checkout; only /demo/config and the localstripe adapter are demo-specific.
 */
(() => {
  "use strict";

  const A = window.Attribution;
  const $ = (id) => document.getElementById(id);
  const state = { demo: null, stripe: null, stripeReady: null, card: null, intent: null, email: null };

  // A stand-in for an analytics tag (in a shop: loading gtag.js). It runs only with analytics consent, once
  // per grant, and its stop function runs when consent is withdrawn.
  A.consent.registerTag(() => {
    window.demoTagRuns = (window.demoTagRuns || 0) + 1;
    $("j-tag").textContent = "running";
    return () => {
      window.demoTagStops = (window.demoTagStops || 0) + 1;
      $("j-tag").textContent = "stopped (consent withdrawn)";
    };
  });

  function money(cents, currency) {
    return new Intl.NumberFormat("pt-PT", { style: "currency", currency: currency.toUpperCase() }).format(
      cents / 100,
    );
  }

  function showError(id, message) {
    const node = $(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  function showStep(step) {
    for (const name of ["lead", "payment", "done"]) $(`step-${name}`).hidden = name !== step;
    for (const item of document.querySelectorAll(".steps li")) {
      item.classList.toggle("active", item.dataset.step === step);
    }
  }

  function renderJourney() {
    const touch = A.firstTouch();
    const checkout = A.currentCheckout();
    const decision = A.consent.current();
    const utm = ["utm_source", "utm_medium", "utm_campaign"].map((k) => touch[k]).filter(Boolean);
    $("j-session").textContent = A.sessionId();
    $("j-event").textContent = checkout ? checkout.event_id : "–";
    $("j-touch").textContent = utm.length ? utm.join(" / ") : "direct (no UTM)";
    $("j-consent").textContent = decision
      ? `analytics ${decision.analytics ? "yes" : "no"}, marketing ${decision.marketing ? "yes" : "no"}`
      : "not decided";
  }

  async function fetchJson(path) {
    const response = await fetch(path);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || `${path}: HTTP ${response.status}`);
    return body;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(script);
    });
  }

  function loadStripe() {
    if (!state.stripeReady) {
      state.stripeReady = loadScript(state.demo.stripe_js_url)
        .then(() => loadScript("/static/demo/localstripe-adapter.js"))
        .then(() => {
          state.stripe = window.Stripe(state.demo.stripe_publishable_key);
          state.card = state.stripe.elements().create("card");
          state.card.mount("#card-element");
        })
        .catch((error) => {
          state.stripeReady = null;
          throw error;
        });
    }
    return state.stripeReady;
  }

  // --- consent modal -------------------------------------------------------------------------------------
  function openConsent(withDetails) {
    const decision = A.consent.current();
    $("consent-analytics").checked = Boolean(decision && decision.analytics);
    $("consent-marketing").checked = Boolean(decision && decision.marketing);
    $("consent-details").hidden = !withDetails;
    $("consent-save").hidden = !withDetails;
    $("consent-customise").hidden = withDetails;
    showError("consent-error", "");
    $("consent-modal").hidden = false;
  }

  async function decide(choose) {
    const pending = choose();
    $("consent-modal").hidden = true; // the choice applies in this browser at once
    renderJourney();
    try {
      await pending;
    } catch (error) {
      showError("lead-error", `Your privacy choice applies here but was not recorded yet: ${error.message}`);
    }
  }

  $("consent-accept").addEventListener("click", () => decide(() => A.consent.acceptAll()));
  $("consent-reject").addEventListener("click", () => decide(() => A.consent.rejectAll()));
  $("consent-customise").addEventListener("click", () => openConsent(true));
  $("consent-save").addEventListener("click", () =>
    decide(() =>
      A.consent.set({ analytics: $("consent-analytics").checked, marketing: $("consent-marketing").checked }),
    ),
  );
  $("consent-settings").addEventListener("click", () => openConsent(true));
  window.addEventListener("consentUpdated", renderJourney);

  // --- Step-1: the lead ----------------------------------------------------------------------------------
  $("lead-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const fields = {
      full_name: form.get("full_name"),
      email: form.get("email"),
      phone: form.get("phone"),
    };
    showError("lead-error", "");
    $("lead-submit").disabled = true;
    try {
      await A.submitLead(fields);
      state.email = String(fields.email).trim();
      A.track("generate_lead");
      renderJourney();
      await openPayment();
    } catch (error) {
      showError("lead-error", error.message);
    } finally {
      $("lead-submit").disabled = false;
    }
  });

  // --- Step-2: the payment -------------------------------------------------------------------------------
  async function openPayment() {
    showStep("payment");
    showError("payment-error", "");
    $("pay-button").disabled = true;
    try {
      await loadStripe();
      state.intent = await A.createPaymentIntent();
      $("pay-button").textContent = `Pay ${money(state.intent.amount, state.intent.currency)}`;
      $("pay-button").disabled = false;
    } catch (error) {
      showError("payment-error", error.message);
    }
  }

  $("pay-button").addEventListener("click", async () => {
    showError("payment-error", "");
    $("pay-button").disabled = true;
    const result = await state.stripe.confirmCardPayment(state.intent.client_secret, {
      payment_method: { card: state.card, billing_details: { email: state.email } },
    });
    if (result.error) {
      showError("payment-error", result.error.message);
      $("pay-button").disabled = false;
      return;
    }
    const paid = result.paymentIntent;
    if (paid.status !== "succeeded") {
      showError("payment-error", `The payment is ${paid.status.replaceAll("_", " ")}.`);
      $("pay-button").disabled = false;
      return;
    }
    A.track("purchase", { transaction_id: paid.id, value: paid.amount / 100, currency: paid.currency });
    $("done-email").textContent = state.email;
    $("done-event-id").textContent = A.currentCheckout().event_id;
    A.completeCheckout();
    renderJourney();
    showStep("done");
  });

  // --- another ticket: a new checkout (new event_id) in the same session -----------------------------------
  $("again-button").addEventListener("click", () => {
    $("lead-form").reset();
    state.intent = null;
    A.startCheckout();
    A.track("begin_checkout");
    renderJourney();
    showStep("lead");
  });

  async function init() {
    renderJourney();
    try {
      const [demo] = await Promise.all([fetchJson("/demo/config"), A.consent.load()]);
      state.demo = demo;
      $("product-name").textContent = demo.product_name;
      $("product-price").textContent = demo.price_cents ? money(demo.price_cents, demo.currency) : "price not set";
      $("consent-version").textContent = A.consent.version;
    } catch (error) {
      showError("lead-error", error.message);
      return;
    }
    A.startCheckout();
    A.track("begin_checkout");
    renderJourney();
    if (A.consent.needsDecision()) openConsent(false);
    document.body.dataset.ready = "true";
  }

  init();
})();
