"""What reviewbot writes: replies, mbox output, text reports, b4 check output."""
