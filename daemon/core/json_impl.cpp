// Boost.JSON's compiled part, built once here for every program that links the core (the
// header-only way: BOOST_JSON_NO_LIB, and Debian's libboost-json is not needed).
#include <boost/json/src.hpp>
