// dpctl as a function: the command line in, the exit status out (documented in --help and
// dpctl(1)), with every error printed as "dpctl: MESSAGE". main() is only this; the unit tests
// call it too.
#pragma once

namespace dpctl {

int run(int argc, char** argv);

}  // namespace dpctl
