-- Grain: one row per delivered MailerLite, sGTM or Meta delivery other than an unsubscribe (delivery_id): whether
-- the consent its destination needs (marketing for MailerLite and Meta, analytics for sGTM) was in force when it
-- was sent.
-- Consent in force at a time: the latest ledger decision recorded at or before it for the delivery's
-- user_session_id or naming its event_id; that is the later of the lead's own capture decision (if recorded by
-- then) and the latest override recorded by then (see consent_overrides).
-- "When it was sent" is when its delivering request started. That is only looked up where it can matter: if no
-- decision was recorded between the delivery's creation and its completion, the consent in force was the same
-- all along. Otherwise each delivering attempt (a replay can deliver twice) is checked, and every one must pass.
with needing as (
    select delivery_id, event_id, user_session_id, destination, kind, created_at, delivered_at
    from stg_deliveries
    where delivery_status = 'delivered' and destination in ('mailerlite', 'sgtm', 'meta') and kind <> 'unsubscribe'
),

own_decisions as (
    select
        event_id,
        {'at': captured_consent_at,
         'marketing': captured_marketing_consent,
         'analytics': captured_analytics_consent} as decision
    from stg_leads
),

overrides as (
    select * from consent_overrides
),

overrides_by_completion as (
    select needing.delivery_id, overrides.recorded_at, overrides.marketing_consent, overrides.analytics_consent
    from needing
    inner join overrides
        on overrides.user_session_id = needing.user_session_id and overrides.recorded_at <= needing.delivered_at
    union all
    select needing.delivery_id, overrides.recorded_at, overrides.marketing_consent, overrides.analytics_consent
    from needing
    inner join overrides
        on overrides.event_id = needing.event_id and overrides.recorded_at <= needing.delivered_at
),

latest_override_by_completion as (
    select
        delivery_id,
        arg_max({'at': recorded_at, 'marketing': marketing_consent, 'analytics': analytics_consent}, recorded_at)
            as decision
    from overrides_by_completion
    group by delivery_id
),

with_candidates as (
    select
        needing.*,
        case when own.decision.at <= needing.delivered_at then own.decision end as own_decision,
        latest.decision as override_decision
    from needing
    left join own_decisions as own on own.event_id = needing.event_id
    left join latest_override_by_completion as latest on latest.delivery_id = needing.delivery_id
),

in_force_at_completion as (
    select
        *,
        case
            when override_decision.at > own_decision.at or own_decision is null then override_decision
            else own_decision
        end as decision
    from with_candidates
),

at_completion as (
    select
        *,
        decision.at as decision_at,
        coalesce(decision.marketing, false) as marketing_at_completion,
        coalesce(decision.analytics, false) as analytics_at_completion
    from in_force_at_completion
),

changed_in_flight as (
    select delivery_id, event_id, user_session_id, destination
    from at_completion
    where decision_at > created_at
),

sends as (
    select changed_in_flight.*, attempts.attempt_number, attempts.started_at as sent_at
    from changed_in_flight
    inner join stg_delivery_attempts as attempts
        on attempts.delivery_id = changed_in_flight.delivery_id and attempts.attempt_outcome = 'delivered'
),

decisions_before_send as (
    -- Few sends get here, so every decision of theirs is joined: own, by session and naming the event_id.
    select sends.delivery_id, sends.attempt_number, own.decision.at as recorded_at, own.decision.marketing,
        own.decision.analytics
    from sends
    inner join own_decisions as own on own.event_id = sends.event_id and own.decision.at <= sends.sent_at
    union all
    select sends.delivery_id, sends.attempt_number, overrides.recorded_at, overrides.marketing_consent,
        overrides.analytics_consent
    from sends
    inner join overrides
        on overrides.user_session_id = sends.user_session_id and overrides.recorded_at <= sends.sent_at
    union all
    select sends.delivery_id, sends.attempt_number, overrides.recorded_at, overrides.marketing_consent,
        overrides.analytics_consent
    from sends
    inner join overrides on overrides.event_id = sends.event_id and overrides.recorded_at <= sends.sent_at
),

at_send as (
    select
        sends.delivery_id,
        sends.attempt_number,
        coalesce(
            arg_max(
                case sends.destination when 'sgtm' then decisions.analytics else decisions.marketing end,
                decisions.recorded_at
            ),
            false
        ) as consent_in_force
    from sends
    left join decisions_before_send as decisions
        on decisions.delivery_id = sends.delivery_id and decisions.attempt_number = sends.attempt_number
    group by sends.delivery_id, sends.attempt_number
),

per_send_verdict as (
    select delivery_id, bool_and(consent_in_force) as in_force_at_every_send
    from at_send
    group by delivery_id
),

final as (
    select
        c.delivery_id,
        c.event_id,
        c.user_session_id,
        c.destination,
        c.kind,
        c.created_at,
        c.delivered_at,
        c.decision_at as consent_decision_at,
        c.marketing_at_completion,
        c.analytics_at_completion,
        coalesce(c.decision_at > c.created_at, false) as consent_changed_before_completion,
        coalesce(
            v.in_force_at_every_send,
            case c.destination when 'sgtm' then c.analytics_at_completion else c.marketing_at_completion end
        ) as made_with_consent
    from at_completion as c
    left join per_send_verdict as v on v.delivery_id = c.delivery_id
)

select * from final
