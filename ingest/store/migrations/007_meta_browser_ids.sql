-- Meta's browser identifiers for the Conversions API, captured by attribution.js with marketing consent only:
-- fbp from the _fbp cookie, fbc from the _fbc cookie or built from the fbclid in the landing URL. Neither is an
-- email or phone; both are kept null when the lead gave no marketing consent.

alter table leads add column fbp varchar;
alter table leads add column fbc varchar;
