/* Unit tests for delivery/ pieces that need no network: status codes of
 * replies for bounces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "delivery/bounce.h"

static void expect_status(const char *reply, const char *want)
{
    char got[16];
    bounce_status_of(reply, got);
    assert_string_equal(got, want);
}

static void test_status_from_enhanced_code(void **state)
{
    (void)state;
    expect_status("550 5.1.1 <a@b>: no such user", "5.1.1");
    expect_status("550 5.1.10 null MX", "5.1.10");
    expect_status("451 4.3.0 try later", "4.3.0");
    expect_status("552 5.3.4", "5.3.4");
}

static void test_status_without_usable_code(void **state)
{
    (void)state;
    expect_status("550 no such user", "5.0.0");
    expect_status("550 4.1.1 class differs from the reply's", "5.0.0");
    expect_status("550 5.1 too short", "5.0.0");
    expect_status("550 5.1.1234 detail too long", "5.0.0");
    expect_status("550 5.1.1x glued", "5.0.0");
    expect_status("421", "4.0.0");
    expect_status("450 requested action not taken", "4.0.0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_from_enhanced_code),
        cmocka_unit_test(test_status_without_usable_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
