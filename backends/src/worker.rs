//! vhost-user-backend's vring worker threads (one epoll loop each) and how they stop.

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// A fresh exit event for one worker thread, the body of `VhostUserBackend::exit_event`.
/// Without one a worker never leaves its loop and dropping the daemon hangs. `None` if the
/// kernel gives no eventfd.
pub fn exit_event() -> Option<(EventConsumer, EventNotifier)> {
    new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_worker_gets_its_own_exit_event() {
        let (consumer, notifier) = super::exit_event().unwrap();
        notifier.notify().unwrap();
        assert!(consumer.consume().is_ok());
        assert!(super::exit_event().is_some());
    }
}
