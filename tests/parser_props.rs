//! Property tests: no answer from the network, however malformed, makes the
//! parsers panic.

use std::time::Duration;

use cloudflare_argo_exporter::budget::{Budget, RateLimit};
use cloudflare_argo_exporter::cloudflare::{interpret, SmartRouting, TokenStatus, Zone};
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = interpret::<SmartRouting>(status, None, &body);
        let _ = interpret::<Zone>(status, None, &body);
        let _ = interpret::<Vec<Zone>>(status, None, &body);
        let _ = interpret::<TokenStatus>(status, None, &body);
    }

    #[test]
    fn near_miss_envelopes_never_panic(
        status in prop_oneof![Just(200u16), Just(400), Just(403), Just(429), Just(502)],
        body in concat!(
            r#"\{("result":(null|\{"id":"[a-z_]{0,12}","value":"(on|off|[a-z]{0,4})","#,
            r#""editable":(true|false|null|"x"|1),"modified_on":(null|1|"[0-9TZ:.+-]{0,32}")"#,
            r#"(,"x":\[\])?\}|\[\]|"x"),)?"success":(true|false|null|"true"),"#,
            r#""errors":(\[\]|\[\{"code":(-?[0-9]{1,12}|"x"),"message":"[ -~]{0,20}"\}\]|null),"#,
            r#""messages":\[\]\}?"#
        ),
    ) {
        if let Ok(setting) = interpret::<SmartRouting>(status, None, body.as_bytes()) {
            prop_assert!(status == 200);
            let _ = setting.modified_at();
        }
    }

    #[test]
    fn any_ratelimit_header_is_survivable(value in "[ -~]{0,80}", policy in proptest::option::of("[ -~]{0,80}")) {
        let budget = Budget::new(RateLimit { count: 10, duration: Duration::from_secs(1) });
        budget.observe_ratelimit_header(&value, policy.as_deref());
    }
}
