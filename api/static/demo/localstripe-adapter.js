/*
 * Demo only: gives localstripe's Stripe.js stand-in the real Stripe.js call
 *   stripe.confirmCardPayment(clientSecret, { payment_method: { card: cardElement, billing_details } })
 * so the checkout code is the same as with https://js.stripe.com/v3/.
 *
 * The stand-in cannot confirm a PaymentIntent from the browser (its confirmCardPayment only answers a 3-D Secure
 * challenge), so: the card is tokenised by localstripe (the number goes only to the fake Stripe), the demo API
 * attaches the token's card to the PaymentIntent and confirms it, and a card that asks for 3-D Secure
 * (e.g. 4000 0025 0000 3155) then goes through the stand-in's own authentication dialog.
 * Load it after the stand-in.
 */
(() => {
  "use strict";

  const StandIn = window.Stripe;
  if (typeof StandIn !== "function") throw new Error("load localstripe's Stripe.js stand-in first");

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
    if (!response.ok) return { error: { code: body.error, message: body.message || `HTTP ${response.status}` } };
    return { paymentIntent: body };
  }

  window.Stripe = (key, options) => {
    const stripe = StandIn(key, options);
    const authenticate = stripe.confirmCardPayment;
    stripe.confirmCardPayment = async (clientSecret, data = {}) => {
      const card = data.payment_method && data.payment_method.card;
      if (!card) return authenticate(clientSecret);
      if (!card.value || !card.value.card.number) return { error: { message: "Enter your card details." } };
      const tokenised = await stripe.createToken(card);
      if (tokenised.error) {
        return { error: { message: tokenised.error.message || "Check your card details and try again." } };
      }
      const confirmed = await attachAndConfirm(clientSecret, tokenised.token.card.id);
      if (confirmed.error || confirmed.paymentIntent.status !== "requires_action") return confirmed;
      return authenticate(clientSecret);
    };
    return stripe;
  };
})();
