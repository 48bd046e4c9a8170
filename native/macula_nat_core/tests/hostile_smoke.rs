//! The adversarial harness itself: an honest pair connects on a quiet
//! rendezvous (the baseline row of `bench/hostile.md`).

mod hostile;

use macula_nat_core::{runtime, ConnectOpts, Rendezvous};

#[test]
fn honest_pair_connects_without_an_attack() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let mut worst: f64 = 0.0;
        for _ in 0..5 {
            worst = worst.max(h.connect_ms(ConnectOpts::default()).await);
        }
        hostile::row("none (baseline)", "-", "-", None, worst);
    });
}
