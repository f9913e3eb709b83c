/* adjtimex(2) as the kernel answers once an NTP client has set the clock: TIME_OK once the file
   named by $FAKE_NTP_SYNCED exists, TIME_ERROR (not synchronised) before. tests/test_clock.py
   preloads it into the daemon, whose edgegw.clock asks libc's adjtimex. */
#include <stdlib.h>
#include <sys/timex.h>
#include <unistd.h>

int adjtimex(struct timex *buf) {
    const char *flag = getenv("FAKE_NTP_SYNCED");
    (void)buf;
    return flag != NULL && access(flag, F_OK) == 0 ? TIME_OK : TIME_ERROR;
}
