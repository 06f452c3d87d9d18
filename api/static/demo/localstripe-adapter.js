/*
 * Demo only: gives localstripe's Stripe.js stand-in the real Stripe.js call
 *   stripe.confirmCardPayment(clientSecret, { payment_method: { card: cardElement, billing_details } })
 * so the checkout code is the same as with https://js.stripe.com/v3/.
 *
 * The stand-in cannot confirm a PaymentIntent from the browser (its confirmCardPayment only answers a 3-D Secure
 * challenge), so: the card is tokenised by localstripe (the number goes only to the fake Stripe), the demo API
 * attaches the token's card to the PaymentIntent and confirms it, and a card that asks for 3-D Secure
 * (e.g. 4000 0025 0000 3155) then goes through the stand-in's own authentication dialog.
 * The stand-in sends "20" + the typed year, so a year typed as 2031 reached localstripe as 202031 and came back
 * as a bare "Bad request": the expiry is read here as buyers type it (MM, and YY or YYYY) and checked first.
 * Load it after the stand-in.
 */
(() => {
  "use strict";

  const StandIn = window.Stripe;
  if (typeof StandIn !== "function") throw new Error("load localstripe's Stripe.js stand-in first");

  // localstripe answers every malformed request with this, which tells a buyer nothing.
  const BARE_REFUSAL = /^bad request\.?$/i;
  const REFUSED_CARD = "The card details were refused: check the card number, the expiry date and the CVC.";

  function refusal(error, fallback) {
    const message = (error && error.message) || "";
    const shown = !message || BARE_REFUSAL.test(message) ? fallback : message;
    return { error: { code: error && error.code, message: shown } };
  }

  // The card's expiry as localstripe wants it ({exp_month, exp_year: YYYY}), or {error} saying what is wrong.
  function expiry(card, now = new Date()) {
    const monthText = String(card.exp_month || "").trim();
    const yearText = String(card.exp_year || "").slice(2).trim(); // the stand-in prefixed "20" to what was typed
    if (!/^\d{1,2}$/.test(monthText) || Number(monthText) < 1 || Number(monthText) > 12) {
      return { error: "Enter the expiry month as a number from 1 to 12." };
    }
    if (!/^(\d{2}|\d{4})$/.test(yearText)) {
      return { error: "Enter the expiry year as YY or YYYY, e.g. 31 or 2031." };
    }
    const month = Number(monthText);
    const year = yearText.length === 2 ? 2000 + Number(yearText) : Number(yearText);
    if (year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) {
      return { error: "This card's expiry date has passed." };
    }
    if (year >= 2100) return { error: "Enter a valid expiry year." };
    return { exp_month: String(month), exp_year: String(year) };
  }

  async function attachAndConfirm(clientSecret, paymentMethod) {
    let response;
    try {
      response = await fetch("/demo/stripe/confirm-card", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ client_secret: clientSecret, payment_method: paymentMethod }),
      });
    } catch (error) {
      return { error: { message: `could not reach the payment service: ${error.message}` } };
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const fallback = `The payment was refused (HTTP ${response.status}).`;
      return refusal({ code: body.error, message: body.message }, fallback);
    }
    return { paymentIntent: body };
  }

  window.Stripe = (key, options) => {
    const stripe = StandIn(key, options);
    const authenticate = stripe.confirmCardPayment;
    stripe.confirmCardPayment = async (clientSecret, data = {}) => {
      const card = data.payment_method && data.payment_method.card;
      if (!card) return authenticate(clientSecret);
      if (!card.value || !card.value.card.number) return { error: { message: "Enter your card details." } };
      const expires = expiry(card.value.card);
      if (expires.error) return { error: { message: expires.error } };
      // createToken reads only `value.card` of the element it is given.
      const typed = { value: { ...card.value, card: { ...card.value.card, ...expires } } };
      const tokenised = await stripe.createToken(typed);
      if (tokenised.error) return refusal(tokenised.error, REFUSED_CARD);
      const confirmed = await attachAndConfirm(clientSecret, tokenised.token.card.id);
      if (confirmed.error || confirmed.paymentIntent.status !== "requires_action") return confirmed;
      return authenticate(clientSecret);
    };
    return stripe;
  };
})();
