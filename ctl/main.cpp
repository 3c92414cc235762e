// dpctl: the dpengine control tool. Thin: run() reads the command line and dispatches the verb
// through the verb table (verb_table.cpp).
#include "run.hpp"

int main(int argc, char** argv) { return dpctl::run(argc, argv); }
