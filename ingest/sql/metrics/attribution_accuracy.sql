-- Grain: one row: attribution_accuracy = succeeded payments (refunded later or not) whose sGTM purchase delivery
-- is delivered / succeeded payments whose lead had analytics consent when the payment succeeded (every succeeded
-- payment with a lead when REQUIRE_CONSENT=false). The numerator counts within the denominator, so a purchase
-- sent for a payment outside it (none should be) cannot lift the figure. No payments in scope: 100%, met.
with payments as (
    select * from payment_outcomes
),

settings as (
    select * from stg_run_settings
),

in_scope as (
    select payments.*
    from payments
    cross join settings
    where payments.is_succeeded
        and payments.names_known_lead
        and (payments.analytics_consent_at_success or not settings.require_consent)
),

counts as (
    select
        count(*) filter (where purchase_delivered) as numerator,
        count(*) as denominator
    from in_scope
),

final as (
    select
        'attribution_accuracy' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        0.95 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator
    from counts
)

select * from final
