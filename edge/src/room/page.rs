//! A `history` page bounded in bytes as well as in messages.
//!
//! A page over `max_bytes` keeps its newest messages (at least one, so a
//! client paging back always moves) and its `next_before` becomes the seq of
//! the oldest message kept, so the next request continues exactly where this
//! page stopped: nothing is skipped or repeated.

use bytes::Bytes;

/// A page of history as read: `(seq, rendered message)` oldest first, and
/// the `next_before` cursor of the next older page (`None` at the start).
pub type Page = (Vec<(u64, Bytes)>, Option<u64>);

/// Trims a page (`(seq, rendered message)`, oldest first, with the cursor
/// `next` the whole page would have had) to at most `max_bytes` of messages.
pub fn fit_page(messages: Vec<(u64, Bytes)>, next: Option<u64>, max_bytes: usize) -> (Vec<Bytes>, Option<u64>) {
    let (kept, next) = fit_page_seqs(messages, next, max_bytes);
    (kept.into_iter().map(|(_, m)| m).collect(), next)
}

/// [`fit_page`], keeping each message's seq.
pub fn fit_page_seqs(messages: Vec<(u64, Bytes)>, next: Option<u64>, max_bytes: usize) -> Page {
    let mut total = 0usize;
    let mut keep = 0usize;
    for (_, m) in messages.iter().rev() {
        total += m.len() + 1;
        if total > max_bytes && keep > 0 {
            break;
        }
        keep += 1;
    }
    let cut = messages.len() - keep;
    let next = if cut == 0 {
        next
    } else {
        messages.get(cut).map(|(s, _)| *s).filter(|&s| s > 1)
    };
    (messages.into_iter().skip(cut).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: std::ops::RangeInclusive<u64>, size: usize) -> Vec<(u64, Bytes)> {
        seqs.map(|s| (s, Bytes::from(vec![b'x'; size]))).collect()
    }

    #[test]
    fn a_page_within_the_bound_is_unchanged() {
        let (msgs, next) = fit_page(page(11..=20, 10), Some(11), 1_000);
        assert_eq!((msgs.len(), next), (10, Some(11)));
        let (msgs, next) = fit_page(page(1..=5, 10), None, 1_000);
        assert_eq!((msgs.len(), next), (5, None));
    }

    #[test]
    fn an_oversized_page_keeps_its_newest_and_continues_at_the_first_kept() {
        // 11 bytes a message (with its comma): 3 fit in 35.
        let (msgs, next) = fit_page(page(11..=20, 10), Some(11), 35);
        assert_eq!(msgs.len(), 3);
        assert_eq!(next, Some(18), "the next page ends below seq 18");
        // Paging on from the cursor reaches seq 1 with nothing skipped.
        let (mut seen, mut before) = (Vec::new(), Some(21u64));
        while let Some(b) = before {
            let lo = b.saturating_sub(10).max(1);
            let whole = page(lo..=b - 1, 10);
            let cursor = (lo > 1).then_some(lo);
            let (msgs, next) = fit_page(whole.clone(), cursor, 35);
            let kept = &whole[whole.len() - msgs.len()..];
            seen.splice(0..0, kept.iter().map(|(s, _)| *s));
            before = next;
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn one_message_larger_than_the_bound_is_still_served() {
        let (msgs, next) = fit_page(page(4..=5, 100), Some(4), 10);
        assert_eq!(msgs.len(), 1);
        assert_eq!(next, Some(5));
        let (msgs, next) = fit_page(page(1..=1, 100), None, 10);
        assert_eq!((msgs.len(), next), (1, None));
    }
}
